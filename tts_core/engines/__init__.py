"""TTS engines behind one interface (``Engine``); ``create_engine`` picks one by name."""

from __future__ import annotations

from typing import Any

from tts_core.engines.base import (
    Engine,
    EngineError,
    SpeechRequest,
    UnsupportedVoiceError,
)

ENGINE_NAMES = ("piper", "synthetic", "openai", "chatterbox")


def create_engine(name: str, **options: Any) -> Engine:
    """Build an engine by name. Heavy imports happen here, only for the engine chosen.

    ``options`` go to the chosen engine's constructor, whose signature checks them (they differ per
    engine, hence Any here).
    """
    if name == "piper":
        from tts_core.engines.piper import PiperEngine

        return PiperEngine(**options)
    if name == "synthetic":
        from tts_core.engines.synthetic import SyntheticEngine

        return SyntheticEngine(**options)
    if name == "openai":
        from tts_core.engines.openai_remote import OpenAIRemoteEngine

        return OpenAIRemoteEngine(**options)
    if name == "chatterbox":
        from tts_core.engines.chatterbox import ChatterboxEngine

        return ChatterboxEngine(**options)
    raise ValueError(f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}")


__all__ = [
    "ENGINE_NAMES",
    "Engine",
    "EngineError",
    "SpeechRequest",
    "UnsupportedVoiceError",
    "create_engine",
]
