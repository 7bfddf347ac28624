"""A stand-in OpenAI-compatible TTS server with the quirks of real ones, switchable per test.

It is not a TTS model: it answers a known tone (so tests can compare samples exactly) in the ways
real servers do: raw PCM in odd-sized chunks, one Content-Length body, 22.05 kHz announced only in
``X-Sample-Rate``, a WAV file, Server-Sent Events, headers long before audio, an empty 200, JSON
errors in three shapes, a stream that stalls, a slow stream whose disconnect it records.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ERROR_BODIES: dict[str, Any] = {
    "openai": {"error": {"message": "voice 'nope' is not available", "type": "invalid_request_error"}},
    "detail": {"detail": "voice 'nope' is not available"},
    "detail_list": {"detail": [{"loc": ["body", "voice"], "msg": "voice 'nope' is not available",
                                "type": "value_error"}]},
}


def tone_pcm(seconds: float, rate: int = 24000, freq: float = 440.0) -> bytes:
    """16-bit little-endian mono sine, amplitude 0.3."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


def wav_header(rate: int) -> bytes:
    """A streaming WAV header (unknown sizes), with a LIST chunk before data as some servers send."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    extra = b"INFOISFT" + struct.pack("<I", 6) + b"Lavf\x00\x00"
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"LIST" + struct.pack("<I", len(extra)) + extra + b"data" + struct.pack("<I", 0xFFFFFFFF))


@dataclass
class SpeechStandin:
    """Behaviour of one stand-in server; change ``mode`` and friends between requests."""

    mode: str = "pcm"
    seconds: float = 0.5
    rate: int = 24000
    error_shape: str = "openai"
    status: int = 500
    header_delay_s: float = 0.0
    audio_delay_s: float = 0.0
    chunk_sizes: tuple[int, ...] = (1, 3, 1001, 7, 4096, 2)
    slow_chunk_s: float = 0.05
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    completed: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/audio/speech", self._speech, methods=["POST"])])

    def expected_pcm(self) -> bytes:
        return tone_pcm(self.seconds, self.rate)

    async def _speech(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append(body)
        self.headers_seen.append(dict(request.headers))
        if self.header_delay_s:
            await asyncio.sleep(self.header_delay_s)
        pcm = self.expected_pcm()
        mode = self.mode
        if mode == "error":
            return JSONResponse(ERROR_BODIES[self.error_shape], status_code=self.status)
        if mode == "json200":
            return JSONResponse(ERROR_BODIES[self.error_shape], status_code=200)
        if mode == "empty":
            return Response(b"", media_type="audio/pcm")
        if mode == "content_length":
            return Response(pcm, media_type="audio/pcm")
        headers = {"X-Sample-Rate": str(self.rate)} if mode == "x_sample_rate" else {}
        media_type = "text/event-stream" if mode == "sse" else "audio/pcm"
        return StreamingResponse(self._body(mode, pcm), media_type=media_type, headers=headers)

    async def _body(self, mode: str, pcm: bytes) -> AsyncIterator[bytes]:
        self.started.set()
        finished = False
        try:
            if self.audio_delay_s:
                await asyncio.sleep(self.audio_delay_s)
            if mode == "wav":
                pcm = wav_header(self.rate) + pcm
            if mode == "sse":
                for start in range(0, len(pcm), 4800):
                    event = {"type": "speech.audio.delta",
                             "audio": base64.b64encode(pcm[start : start + 4800]).decode()}
                    yield f"data: {json.dumps(event)}\n\n".encode()[:7]  # split mid-event
                    yield f"data: {json.dumps(event)}\n\n".encode()[7:]
                yield b'data: {"type": "speech.audio.done"}\n\n'
                self.completed += 1
                finished = True
                return
            if mode == "stall":
                yield pcm[:4800]
                await asyncio.Event().wait()  # never sends the rest
            if mode == "slow":
                for start in range(0, len(pcm), 960):
                    yield pcm[start : start + 960]
                    await asyncio.sleep(self.slow_chunk_s)
                self.completed += 1
                finished = True
                return
            pos, i = 0, 0
            while pos < len(pcm):
                size = self.chunk_sizes[i % len(self.chunk_sizes)]
                yield pcm[pos : pos + size]
                pos += size
                i += 1
                await asyncio.sleep(0)
            self.completed += 1
            finished = True
        finally:
            if not finished:
                self.disconnected.set()  # cancelled or closed before the end: the client went away
