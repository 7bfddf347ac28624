"""Opt-in: the remote engine against a real third-party OpenAI-compatible TTS server.

CI has no such server, so these run only when ``VOICE_BRIDGE_THIRD_PARTY_TTS_URL`` (a base URL
ending in ``/v1``) and ``VOICE_BRIDGE_THIRD_PARTY_TTS_VOICE`` are set. Optional:
``..._MODEL`` (default ``tts-1``), ``..._STREAM_FIELDS`` (comma-separated, default
``stream_format,speed``; fastkokoro needs ``stream``), ``..._SAMPLE_RATE`` (force the pcm rate, as
``VOICE_BRIDGE_ENGINE_SAMPLE_RATE`` does) and ``..._NATIVE_RATE`` (the rate the server really
renders at, when you know it: the duration check then does not rely on what the server announces).
README ("Third-party TTS servers tried") has the commands that start the servers tried.

The engine is given an httpx client whose transport records the exact bytes each response carried,
so the duration check compares our audio with the very body it was decoded from (TTS models are
not deterministic: two renderings of one sentence differ in length by a few per cent).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from tts_core.engines import SpeechRequest
from tts_core.engines.openai_remote import OPENAI_PCM_RATE, OpenAIRemoteEngine
from tts_core.presets import load_presets

PREFIX = "VOICE_BRIDGE_THIRD_PARTY_TTS_"
URL = os.environ.get(PREFIX + "URL", "")
VOICE = os.environ.get(PREFIX + "VOICE", "")

pytestmark = pytest.mark.skipif(
    not (URL and VOICE),
    reason=f"set {PREFIX}URL and {PREFIX}VOICE to run against a real TTS server")

SENTENCE = "Thanks for calling. Your order shipped this morning and should arrive on Thursday."
LONG_TEXT = " ".join([
    "Let me read the whole policy to you, because every part of it matters for your claim.",
    "The first section covers damage in transit, the second covers items lost by the carrier,",
    "and the third explains how refunds are paid, which usually takes five to seven days.",
] * 4)
FIRST_BYTE_TIMEOUT_S = 60.0  # CPU servers on a shared machine are slow to the first byte


@dataclass
class Recorded:
    """One response body as the engine received it."""

    headers: dict[str, str]
    data: bytearray = field(default_factory=bytearray)
    complete: bool = False
    closed: bool = False


class _RecordingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, record: Recorded) -> None:
        self._inner = inner
        self._record = record

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._record.data += chunk
            yield chunk
        self._record.complete = True

    async def aclose(self) -> None:
        self._record.closed = True
        await self._inner.aclose()


class RecordingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that keeps a copy of every response body and notes its closing."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.responses: list[Recorded] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        record = Recorded({k.lower(): v for k, v in response.headers.items()})
        self.responses.append(record)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _RecordingStream(response.stream, record)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def engine_and_wire() -> AsyncIterator[tuple[OpenAIRemoteEngine, RecordingTransport]]:
    transport = RecordingTransport()
    client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(
        connect=10.0, read=None, write=10.0, pool=10.0))
    fields = os.environ.get(PREFIX + "STREAM_FIELDS", "stream_format,speed")
    rate = os.environ.get(PREFIX + "SAMPLE_RATE")
    engine = OpenAIRemoteEngine(
        [URL], model=os.environ.get(PREFIX + "MODEL", "tts-1"), voices=[VOICE],
        stream_fields=[f for f in fields.split(",") if f.strip()],
        sample_rate=int(rate) if rate else None, first_byte_timeout_s=FIRST_BYTE_TIMEOUT_S,
        stall_timeout_s=FIRST_BYTE_TIMEOUT_S, http_client=client)
    await engine.load()
    try:
        yield engine, transport
    finally:
        await engine.aclose()
        await client.aclose()


def utterance(text: str) -> SpeechRequest:
    return SpeechRequest(text=text, voice_id=VOICE, preset=load_presets().get("balanced"))


async def speak(engine: OpenAIRemoteEngine, text: str) -> np.ndarray:
    chunks = [c async for c in engine.stream(utterance(text))]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def native_rate(record: Recorded) -> int:
    """The rate the server rendered at: configured, else announced, else OpenAI's 24 kHz."""
    configured = os.environ.get(PREFIX + "NATIVE_RATE")
    if configured:
        return int(configured)
    announced = record.headers.get("x-sample-rate", "")
    if announced.isdigit():
        return int(announced)
    if bytes(record.data[:4]) == b"RIFF":
        return struct.unpack("<I", bytes(record.data[24:28]))[0]
    return OPENAI_PCM_RATE


def wire_samples(record: Recorded) -> int:
    """16-bit samples in a body (without a WAV header, if it has one)."""
    data = bytes(record.data)
    if data[:4] == b"RIFF":
        data = data[data.index(b"data") + 8:]
    return len(data) // 2


async def test_streamed_audio_is_speech_not_silence(engine_and_wire) -> None:
    engine, _ = engine_and_wire
    audio = await speak(engine, SENTENCE)
    assert audio.size > engine.sample_rate, "less than a second of audio for a 13-word sentence"
    assert np.all(np.isfinite(audio))
    assert float(np.max(np.abs(audio))) < 1.05, "beyond full scale (resampling overshoot aside)"
    assert float(np.max(np.abs(audio))) > 0.05, "near-silent audio"
    frames = audio[: audio.size // 480 * 480].reshape(-1, 480)  # 20 ms at 24 kHz
    voiced = np.sqrt(np.mean(frames**2, axis=1)) > 0.01
    assert voiced.mean() > 0.3, f"only {voiced.mean():.0%} of 20 ms frames carry sound"


async def test_duration_matches_the_servers_rate(engine_and_wire) -> None:
    """Not played at the wrong speed: our audio lasts exactly as long as the body it came from,
    at the server's real rate (22.05 kHz read as 24 kHz would be 8% short and high-pitched)."""
    engine, wire = engine_and_wire
    audio = await speak(engine, SENTENCE)
    [record] = wire.responses
    assert record.complete
    expected_s = wire_samples(record) / native_rate(record)
    ours_s = audio.size / engine.sample_rate
    assert ours_s == pytest.approx(expected_s, rel=0.01, abs=0.02), (
        f"{ours_s:.3f} s of audio from a body of {expected_s:.3f} s at {native_rate(record)} Hz")
    words_per_s = len(SENTENCE.split()) / ours_s
    assert 1.2 < words_per_s < 5.0, f"{words_per_s:.1f} words/s is not human speech"


async def test_cancel_mid_stream_closes_the_request_and_the_server_takes_the_next(
        engine_and_wire) -> None:
    engine, wire = engine_and_wire
    async with aclosing(engine.stream(utterance(LONG_TEXT))) as stream:
        first = await anext(stream)
        assert first.size
        started = time.perf_counter()
    closed_in = time.perf_counter() - started
    [record] = wire.responses
    assert record.closed, "the HTTP response was not closed when the utterance was"
    assert closed_in < 2.0
    assert engine.busy_slots == 0
    audio = await speak(engine, "Are you still there?")
    assert audio.size > engine.sample_rate // 4
    assert engine.servers()[0]["failures"] == 0
