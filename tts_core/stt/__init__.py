"""Speech recognition for caller audio: the ``Recogniser`` interface and its implementations.

``create_recogniser(kind, **options)`` builds one by name: ``local`` (faster-whisper on the CPU, the
default) or ``openai`` (a remote OpenAI-compatible transcription server; provided by
``tts_core.stt.openai_remote`` when that module is present).
"""

from __future__ import annotations

import importlib
from typing import Any

from tts_core.stt.base import SAMPLE_RATE, Recogniser, RecogniserError, Transcript

REMOTE_MODULE = "tts_core.stt.openai_remote"
"""Where the remote recogniser lives: a module exposing ``OpenAIRecogniser(**options)``."""


def create_recogniser(kind: str, **options: Any) -> Recogniser:
    """Build a recogniser by kind. ``options`` go to its constructor, whose signature checks them
    (they differ per kind, hence Any here)."""
    if kind == "local":
        from tts_core.stt.whisper_local import WhisperRecogniser

        return WhisperRecogniser(**options)
    if kind == "openai":
        try:
            module = importlib.import_module(REMOTE_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name != REMOTE_MODULE:
                raise
            raise RecogniserError(
                "VOICE_BRIDGE_STT=openai (remote recognition) is not available yet in this build; "
                "use VOICE_BRIDGE_STT=local or off") from None
        recogniser: Recogniser = module.OpenAIRecogniser(**options)
        return recogniser
    raise RecogniserError(f"unknown recogniser {kind!r} (known: local, openai)")


__all__ = ["SAMPLE_RATE", "Recogniser", "RecogniserError", "Transcript", "create_recogniser"]
