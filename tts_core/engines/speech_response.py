"""Reading the body of an OpenAI-style ``/audio/speech`` answer as it streams in.

Servers that claim the same API answer in different ways (see ../shared/protocols.md): raw PCM in
chunks of any size (odd ones too), the same as one ``Content-Length`` body, a WAV file although PCM
was asked for, Server-Sent Events of base64 ``speech.audio.delta`` events, or an error as JSON in
three shapes, sometimes under a 200. This module turns each into float32 samples or one error
message; it does no I/O, so every quirk is tested without a server.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct

import numpy as np

from tts_core.audio.arrays import FloatAudio
from tts_core.errors import UpstreamFailed

MAX_HEADER_BYTES = 64 * 1024
"""A WAV header (with any extra chunks) or one SSE event larger than this is not a speech answer."""


class SpeechBodyError(UpstreamFailed, ValueError):
    """The body is not audio we can play; the message says what it was (a server's fault)."""

    kind = "bad_speech_body"


class PcmDecoder:
    """16-bit little-endian mono PCM in arbitrary splits -> float32.

    An odd trailing byte is carried to the next piece (a sample split between two reads must not
    shift every later sample by a byte: that is loud noise). A body that starts with a RIFF/WAVE
    header has the header skipped and its sample rate noted in ``header_rate``.
    """

    def __init__(self) -> None:
        self._carry = b""
        self._head: bytearray | None = bytearray()  # None once we know where samples start
        self.header_rate: int | None = None
        self.bytes_in = 0

    def feed(self, data: bytes) -> FloatAudio:
        self.bytes_in += len(data)
        if self._head is not None:
            self._head += data
            if len(self._head) < 4 and self._head == b"RIFF"[: len(self._head)]:
                return _EMPTY
            if self._head.startswith(b"RIFF"):
                start = self._wav_data_offset(bytes(self._head))
                if start is None:
                    if len(self._head) > MAX_HEADER_BYTES:
                        raise SpeechBodyError("WAV header without a data chunk")
                    return _EMPTY
                data = bytes(self._head[start:])
            else:
                data = bytes(self._head)
            self._head = None
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if len(data) % 2:
            self._carry = data[-1:]
            data = data[:-1]
        if not data:
            return _EMPTY
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0

    def _wav_data_offset(self, head: bytes) -> int | None:
        """Offset of the first sample, or None while the header is incomplete."""
        if len(head) < 12:
            return None
        if head[8:12] != b"WAVE":
            raise SpeechBodyError("RIFF body that is not WAVE audio")
        pos = 12
        while pos + 8 <= len(head):
            chunk_id, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
            if chunk_id == b"data":
                return pos + 8
            if chunk_id == b"fmt ":
                if pos + 8 + 16 > len(head):
                    return None
                fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", head[pos + 8 : pos + 24])
                if fmt not in (1, 0xFFFE) or channels != 1 or bits != 16:
                    raise SpeechBodyError(
                        f"WAV body is format {fmt}, {channels} channel(s), {bits} bit; "
                        "expected 16-bit mono PCM")
                self.header_rate = rate
            pos += 8 + size + (size & 1)
        return None


class SseAudioDecoder:
    """``text/event-stream`` of ``speech.audio.delta`` events (base64 PCM) -> PCM bytes.

    ``feed`` returns the PCM bytes of every complete event so far; ``done`` turns true at
    ``speech.audio.done``. An ``error`` event raises SpeechBodyError with its message.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while True:
            end, sep = _event_end(self._buffer)
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES * 16:
                    raise SpeechBodyError("server-sent event too large")
                return bytes(out)
            event, self._buffer = self._buffer[:end], self._buffer[end + sep :]
            out += self._event_audio(event)

    def _event_audio(self, event: bytes) -> bytes:
        payload = b"\n".join(line[5:].lstrip() for line in event.splitlines()
                             if line.startswith(b"data:"))
        if not payload or payload.strip() == b"[DONE]":
            if payload.strip() == b"[DONE]":
                self.done = True
            return b""
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):  # ValueError: also an int over 4,300 digits
            raise SpeechBodyError("server-sent event is not JSON") from None
        if not isinstance(message, dict):
            raise SpeechBodyError("server-sent event is not a JSON object")
        kind = message.get("type", "")
        if kind == "error" or "error" in message:
            raise SpeechBodyError(error_message(message) or "server sent an error event")
        if kind.endswith(".done"):
            self.done = True
            return b""
        audio = message.get("audio", message.get("delta"))
        if not isinstance(audio, str):
            return b""  # other event kinds carry no audio
        try:
            return base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise SpeechBodyError("speech.audio.delta is not valid base64") from None


def _event_end(buffer: bytes) -> tuple[int, int]:
    """Index and length of the first event separator (blank line), or (-1, 0)."""
    best, sep = -1, 0
    for marker in (b"\n\n", b"\r\n\r\n"):
        i = buffer.find(marker)
        if i >= 0 and (best < 0 or i < best):
            best, sep = i, len(marker)
    return best, sep


def error_message(body: object) -> str | None:
    """The message of an error body in any of the shapes servers use, or None if it is not one.

    ``{"error": {"message": ...}}`` (OpenAI), ``{"error": "..."}``, ``{"detail": "..."}`` (FastAPI
    HTTPException) and ``{"detail": [{"loc": [...], "msg": ...}]}`` (FastAPI validation).
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return str(message) if message else json.dumps(error)[:300]
    if isinstance(error, str):
        return error
    detail = body.get("detail")
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return "; ".join(parts) or None
    message = body.get("message")
    return message if isinstance(message, str) else None


def describe_error_body(raw: bytes) -> str:
    """A short, printable description of an error response body."""
    try:
        message = error_message(json.loads(raw))
    except (ValueError, RecursionError):
        message = None
    if message:
        return message[:300]
    text = raw[:200].decode("utf-8", "replace").strip()
    return text or "empty body"


_EMPTY = np.zeros(0, dtype=np.float32)
