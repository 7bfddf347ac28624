"""Shared fixtures. Keep this small."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.chat_standin import StandInChatServer
from tts_core.stt import Recogniser

SPEECH_DIR = Path(__file__).parent / "data" / "speech"


@pytest.fixture(scope="session")
def recogniser() -> Iterator[Recogniser]:
    """The embedded Whisper recogniser, loaded once per test session (~0.5 s) and shared by every
    bridge that passes it (bridges do not close an injected recogniser). Its pool is loop-agnostic,
    so function-scoped event loops can all use it."""
    from tts_core.stt.whisper_local import WhisperRecogniser

    loaded = WhisperRecogniser()
    asyncio.run(loaded.load())
    yield loaded
    asyncio.run(loaded.aclose())


def speech_clip(name: str) -> bytes:
    """A real human speech clip as 8 kHz μ-law (tests/data/speech)."""
    return (SPEECH_DIR / f"{name}.ulaw").read_bytes()



@pytest.fixture
async def chat_standin() -> AsyncIterator[StandInChatServer]:
    """A STAND-IN OpenAI-compatible chat server on loopback (see tests/chat_standin.py)."""
    async with StandInChatServer() as server:
        yield server
