"""Streaming one ``/v1/audio/speech`` response: engine chunks -> encoded bytes -> the HTTP body.

Kept apart from the route (``telephony/speech_api.py``) because this is the part with the audio
and cancellation rules: one encoder per response across all text segments (no seams), bytes leave
as soon as the engine's chunk is encoded, a client that goes away closes the engine stream at once
(its slot is free again), and a failure after the headers aborts the body instead of ending it as
if the audio were complete.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import anyio
import numpy as np
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tts_core.audio import MulawFrameEncoder, Pcm16Encoder
from tts_core.audio.telephony_format import TELEPHONY_RATE
from tts_core.engines.base import Engine, EngineError, SpeechRequest
from tts_core.errors import InvalidInput, VoiceBridgeError
from tts_core.presets import Preset
from tts_core.voices import Voice

log = logging.getLogger(__name__)

PCM_RATE = 24000
"""OpenAI's pcm contract: 24 kHz 16-bit little-endian mono, whatever the engine speaks."""
UNKNOWN_SIZE = 0xFFFFFFFF
"""RIFF and data sizes of a streamed WAV whose length is unknown when the header leaves (as OpenAI)."""
CLOSE_TIMEOUT_S = 5.0
"""Bound on closing the engine stream after the client left (an engine finishes its chunk in flight)."""


class ByteEncoder(Protocol):
    def push(self, chunk: np.ndarray) -> bytes: ...

    def flush(self) -> bytes: ...


class MulawBytes:
    """``MulawFrameEncoder`` as a byte stream: 8 kHz G.711 μ-law, faded and padded at the very end."""

    def __init__(self, source_rate: int) -> None:
        self._encoder = MulawFrameEncoder(source_rate)

    def push(self, chunk: np.ndarray) -> bytes:
        return b"".join(self._encoder.push(chunk))

    def flush(self) -> bytes:
        return b"".join(self._encoder.flush())


def wav_stream_header(sample_rate: int = PCM_RATE) -> bytes:
    """44-byte header of a 16-bit mono PCM WAV of unknown length (sizes 0xFFFFFFFF)."""
    return (
        b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data" + struct.pack("<I", UNKNOWN_SIZE)
    )


@dataclass(frozen=True)
class OutputFormat:
    """One ``response_format`` the bridge encodes."""

    name: str
    media_type: str
    sample_rate: int
    header: bytes
    make_encoder: Callable[[int], ByteEncoder]


FORMATS: dict[str, OutputFormat] = {
    "pcm": OutputFormat("pcm", "audio/pcm", PCM_RATE, b"", lambda rate: Pcm16Encoder(rate, PCM_RATE)),
    "wav": OutputFormat("wav", "audio/wav", PCM_RATE, wav_stream_header(PCM_RATE),
                        lambda rate: Pcm16Encoder(rate, PCM_RATE)),
    "mulaw": OutputFormat("mulaw", "audio/basic", TELEPHONY_RATE, b"", MulawBytes),
}
UNSUPPORTED_FORMATS = ("mp3", "opus", "aac", "flac")
"""OpenAI formats the bridge does not encode (they would need a codec dependency)."""


async def speech_audio(
    engine: Engine,
    segments: list[str],
    *,
    voice_id: str,
    preset: Preset,
    voice: Voice | None,
    encoder: ByteEncoder,
) -> AsyncGenerator[bytes, None]:
    """Every segment through one engine stream at a time and one shared encoder, flushed at the end.

    Only non-empty byte strings are yielded. Closing this generator closes the engine stream it is
    in (``aclosing``), which frees the engine's slot and counts the utterance as cancelled.
    """
    for index, segment in enumerate(segments):
        request = SpeechRequest(segment, voice_id, preset, voice, first_in_turn=index == 0)
        async with aclosing(engine.stream(request)) as chunks:
            async for chunk in chunks:
                data = encoder.push(chunk)
                if data:
                    yield data
    tail = encoder.flush()
    if tail:
        yield tail


class ClientGone(InvalidInput):
    """The client disconnected before the first audio byte: nobody to answer; logged as 499
    (nginx's "client closed request"), never a server error."""

    kind = "client_disconnected"
    http_status = 499
    ws_close_code = 1001  # going away


async def first_bytes(body: AsyncGenerator[bytes, None], request: Request) -> bytes | None:
    """The body's first bytes (``None``: it ended without any), raced against the client leaving.

    Waiting for the engine's first chunk can take a while (a GPU's first chunk, a long first
    sentence on Piper); a client that gives up meanwhile (a first-byte timeout, a barge-in) must
    free the engine slot now, not when the response would have started. Engine errors propagate.
    Raises ``ClientGone`` (the body is then closed).
    """

    async def pull() -> bytes | None:
        try:
            return await anext(body)
        except StopAsyncIteration:
            return None

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    pulling = asyncio.create_task(pull(), name="speech-first-chunk")
    watching = asyncio.create_task(disconnected(), name="speech-disconnect-watch")
    try:
        await asyncio.wait({pulling, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not pulling.done():
            pulling.cancel()  # raises inside the generator: its engine stream closes
        await asyncio.gather(pulling, watching, return_exceptions=True)
    if pulling.cancelled():
        await body.aclose()
        raise ClientGone
    return pulling.result()


async def prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """``first`` then ``rest``; closing this closes ``rest``."""
    try:
        yield first
        async for data in rest:
            yield data
    finally:
        await rest.aclose()


async def sse_events(
    first: bytes, rest: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """OpenAI's SSE framing: ``speech.audio.delta`` events of base64 audio, then ``speech.audio.done``.

    SSE can say that something failed, so an engine failure mid-stream becomes an ``error`` event
    (OpenAI's error object) and no ``done`` event follows.
    """

    def event(payload: dict[str, object]) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    try:
        yield event({"type": "speech.audio.delta", "audio": base64.b64encode(first).decode()})
        try:
            async for data in rest:
                yield event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        except Exception as exc:  # the status line is gone: report it in-band
            log.warning("speech stream failed mid-body: %s", exc,
                        exc_info=not isinstance(exc, VoiceBridgeError))  # a bug: with its traceback
            yield event({"type": "error", "error": {"message": f"synthesis failed: {exc}",
                                                    "type": "server_error", "param": None,
                                                    "code": "engine_error"}})
            return
        yield event({"type": "speech.audio.done"})
    finally:
        await rest.aclose()


class AudioStreamResponse(StreamingResponse):
    """A chunked audio body that always closes its iterator, and aborts rather than lies.

    Starlette abandons the iterator when it cancels the response on a client disconnect (even
    before its first step, if the client left in between); it would be finalised whenever the
    garbage collector gets to it. Here it is closed at once, so the engine stream inside stops,
    and ``on_close`` runs (the route's in-flight count). A failure after the headers cannot change
    the status, and a cleanly ended body would pass for complete audio: the final chunk is not
    sent, and the server closes the connection, which every HTTP client reports as an incomplete
    body.
    """

    send_stall_timeout_s: float = 30.0
    """A client that reads nothing for this long is cut off: it would hold an engine slot forever
    (the engine only renders as fast as the client reads). A real-time player reads far sooner."""

    def __init__(self, content: AsyncGenerator[bytes, None], *, media_type: str, headers: dict[str, str],
                 on_close: Callable[[], None] | None = None) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._body = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                    await self._body.aclose()  # a no-op if it already ended
            finally:
                if self._on_close is not None:
                    self._on_close()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        try:
            async for chunk in self._body:
                with anyio.fail_after(self.send_stall_timeout_s):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except TimeoutError:
            log.warning("speech client read nothing for %.0f s: response aborted",
                        self.send_stall_timeout_s)
            return
        except Exception as exc:
            log.warning("speech stream aborted mid-body: %s", exc,
                        exc_info=not isinstance(exc, EngineError))
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
