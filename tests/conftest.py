"""Shared fixtures and helpers. Keep this small: a helper lives here only when several test files
would otherwise each carry their own copy."""

from __future__ import annotations

import asyncio
import inspect
import io
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.chat_standin import StandInChatServer
from tts_core.stt import Recogniser

SPEECH_DIR = Path(__file__).parent / "data" / "speech"
POLL_S = 0.005


async def eventually(predicate: Callable[[], object | Awaitable[object]], timeout: float = 10.0,
                     what: str = "the condition") -> float:
    """Wait until ``predicate()`` is truthy and return the seconds it took; fail the test, naming
    ``what``, if it is not within ``timeout``.

    For state with no event to wait on (a server's counters, a peer's socket, another thread).
    Prefer an event where the code offers one. ``predicate`` may be async (e.g. an HTTP probe)."""
    started = time.monotonic()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        await asyncio.sleep(POLL_S)


def wav_bytes(samples: np.ndarray, rate: int, *, width: int = 2, channels: int = 1) -> bytes:
    """A PCM WAV file of float ``samples`` in [-1, 1]: shape (frames,) is copied to each of
    ``channels``; shape (frames, channels) gives every channel its own signal. ``width`` is the
    sample size in bytes: 1 (unsigned, as WAV stores 8-bit), 2, 3 or 4."""
    frames = np.asarray(samples, dtype=np.float64)
    if frames.ndim == 1:
        frames = np.repeat(frames[:, None], channels, axis=1)
    full_scale = 2 ** (8 * width - 1) - 1
    ints = np.round(np.clip(frames, -1, 1) * full_scale).astype(np.int64).reshape(-1)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:  # little-endian two's complement, keeping the low ``width`` bytes of each int32
        raw = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :width].tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(raw)
    return buf.getvalue()


def tone(seconds: float, rate: int, hz: float = 180.0, level: float = 0.3) -> np.ndarray:
    """A sine: a signal whose every sample is audible (silence would hide a lost or zeroed chunk)."""
    t = np.arange(round(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


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
