"""Twilio's side of a Media Stream, for end-to-end tests, the load test and the call simulator.

It connects like Twilio (optionally signing the handshake), sends ``connected`` and ``start``,
streams caller audio at 20 ms, and emulates Twilio's playback: outbound frames go into a buffer
played at exactly 160 bytes per 20 ms; a mark is echoed when playback reaches it; ``clear`` empties
the buffer and echoes every pending mark. Every outbound message is validated against Twilio's
documented shape, and what the caller would hear is kept for WAV output and timing analysis.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from tts_core.audio.mulaw import mulaw_to_pcm16, pcm16_to_mulaw

FRAME_BYTES = 160
FRAME_S = 0.020
SILENCE = b"\xff" * FRAME_BYTES


@dataclass
class HeardUtterance:
    """One stretch of bot speech as the caller heard it."""

    first_frame_received: float
    started_playing: float | None = None
    ended: float | None = None
    frames: int = 0
    underruns: int = 0
    underrun_ms: float = 0.0
    outcome: str = "playing"  # played | cleared | playing


@dataclass
class EmulatorStats:
    media_received: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears: int = 0
    invalid: list[str] = field(default_factory=list)
    utterances: list[HeardUtterance] = field(default_factory=list)
    clear_times: list[float] = field(default_factory=list)
    mark_names: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def underruns(self) -> int:
        return sum(u.underruns for u in self.utterances)

    @property
    def underrun_ms(self) -> float:
        return sum(u.underrun_ms for u in self.utterances)


class TwilioEmulator:
    def __init__(
        self,
        url: str,
        *,
        call_sid: str = "CA00000000000000000000000000000001",
        stream_sid: str = "MZ00000000000000000000000000000001",
        account_sid: str = "AC00000000000000000000000000000001",
        custom_parameters: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        media_format: dict[str, Any] | None = None,
        keep_audio: bool = True,
    ) -> None:
        self.url = url
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.account_sid = account_sid
        self.custom_parameters = custom_parameters or {}
        self.headers = headers or {}
        self.media_format = media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                             "channels": 1}
        self.keep_audio = keep_audio
        self.stats = EmulatorStats()
        self.heard = bytearray()
        """What the caller heard, 8 kHz μ-law, silence included, from the start message on."""
        self.received: list[bytes | str] = []
        """Every media frame and mark name as received, in order (with ``keep_audio``)."""
        self.outbound_log: list[tuple[float, str]] = []
        self.start_sent_at: float | None = None
        self._ws: ClientConnection | None = None
        self._buffer: deque[bytes | str] = deque()  # frames and mark names, in order
        self._seq = 0
        self._chunk = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._current: HeardUtterance | None = None
        self._closed = asyncio.Event()
        self._echo_lock = asyncio.Lock()
        self._pending_starts: deque[float] = deque()
        """Receive times of utterances queued behind an end mark that has not played yet."""
        self.mark_echoes: list[tuple[float, str]] = []
        self.reading_stopped = False

    # ---- connection ---------------------------------------------------------------------------------
    async def connect(self, *, send_start: bool = True) -> None:
        # No permessage-deflate: Twilio does not compress, and compression would charge the bridge
        # CPU that production never costs it.
        self._ws = await websockets.connect(self.url, additional_headers=self.headers,
                                            open_timeout=10, max_size=1 << 20, compression=None)
        self._tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._playback())]
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        if send_start:
            await self.send_start()

    async def send_start(self) -> None:
        self.start_sent_at = time.monotonic()
        await self.send_json({
            "event": "start", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid,
                      "callSid": self.call_sid, "tracks": ["inbound"],
                      "customParameters": self.custom_parameters, "mediaFormat": self.media_format},
        })

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send, unless the bridge already closed the stream (then the message is dropped, as
        Twilio would drop it; ``stats.close_code`` says why)."""
        assert self._ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._ws.send(data)

    async def send_media(self, payload: bytes) -> None:
        self._chunk += 1
        await self.send_json({
            "event": "media", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": str(self._chunk),
                      "timestamp": str(self._chunk * 20),
                      "payload": base64.b64encode(payload).decode()},
        })

    async def stream_audio(self, mulaw: bytes, *, realtime: bool = True) -> None:
        """Send caller audio as 20 ms media messages on Twilio's timing."""
        started = time.monotonic()
        for index in range(0, len(mulaw), FRAME_BYTES):
            await self.send_media(mulaw[index : index + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff"))
            if realtime:
                delay = started + (index // FRAME_BYTES + 1) * FRAME_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def stream_echo(self, seconds: float, *, gain_db: float = -20.0, delay_ms: float = 60.0) -> None:
        """Send, as the caller's audio, what the caller heard ``delay_ms`` ago at ``gain_db``: the
        bot's own voice coming back over the line (a phone without echo cancellation). Needs
        ``keep_audio``."""
        gain = 10.0 ** (gain_db / 20.0)
        delay_bytes = int(delay_ms / 1000 / FRAME_S) * FRAME_BYTES
        started = time.monotonic()
        for index in range(int(seconds / FRAME_S)):
            position = len(self.heard) - delay_bytes - FRAME_BYTES
            frame = bytes(self.heard[position : position + FRAME_BYTES]) if position >= 0 else SILENCE
            pcm = (mulaw_to_pcm16(frame).astype(np.float32) * gain).astype(np.int16)
            await self.send_media(pcm16_to_mulaw(pcm))
            delay = started + (index + 1) * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def send_silence(self, seconds: float) -> None:
        await self.stream_audio(SILENCE * int(seconds / FRAME_S))

    async def send_dtmf(self, digit: str) -> None:
        await self.send_json({"event": "dtmf", "streamSid": self.stream_sid,
                              "sequenceNumber": self._next_seq(),
                              "dtmf": {"track": "inbound_track", "digit": digit}})

    async def send_stop(self) -> None:
        await self.send_json({"event": "stop", "sequenceNumber": self._next_seq(),
                              "streamSid": self.stream_sid,
                              "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})

    async def stop_reading(self) -> None:
        """Act as a Twilio side that stops reading the socket (a hung media server, a full receive
        buffer): nothing more is read, played or echoed. The WebSocket client stops taking bytes
        off the socket once its small message queue is full, so the bridge's sends pile up in the
        kernel's buffers and then in its transport's, as with a real stalled peer."""
        self.reading_stopped = True
        for task in self._tasks[:2]:  # the reader and the playback clock
            task.cancel()
        await asyncio.gather(*self._tasks[:2], return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)

    async def hang_up(self) -> None:
        """Twilio ends the call: ``stop`` then close."""
        with contextlib.suppress(Exception):
            await self.send_stop()
        await self.close()

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # ---- waiting helpers for tests ----------------------------------------------------------------
    async def wait_for(self, predicate: Any, timeout: float = 10.0, poll: float = 0.01) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if self._closed.is_set() and not predicate():
                return bool(predicate())
            await asyncio.sleep(poll)
        return bool(predicate())

    def played_utterances(self) -> list[HeardUtterance]:
        return [u for u in self.stats.utterances if u.outcome == "played"]

    # ---- internals ----------------------------------------------------------------------------------
    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def _reader(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                self._on_outbound(raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            if self._ws.close_code is not None:
                self.stats.close_code = self._ws.close_code
                self.stats.close_reason = self._ws.close_reason or ""
            if not self.reading_stopped:  # stop_reading: the socket is still open
                self._closed.set()

    def _on_outbound(self, raw: str | bytes) -> None:
        now = time.monotonic()
        if isinstance(raw, bytes):
            self.stats.invalid.append("binary frame (Twilio error 31950)")
            return
        self.outbound_log.append((now, raw[:80]))
        problem = validate_outbound(raw, self.stream_sid)
        if problem:
            self.stats.invalid.append(problem)
            return
        message = json.loads(raw)
        event = message["event"]
        if event == "media":
            self.stats.media_received += 1
            frame = base64.b64decode(message["media"]["payload"])
            if self._current is None:
                self._current = HeardUtterance(first_frame_received=now)
                self.stats.utterances.append(self._current)
            elif self._buffer and isinstance(self._buffer[-1], str) and self._buffer[-1].endswith("-end"):
                self._pending_starts.append(now)  # a new utterance queued behind the last one
            self._buffer.append(frame)
            if self.keep_audio:
                self.received.append(frame)
        elif event == "mark":
            self.stats.marks_received += 1
            self.stats.mark_names.append(message["mark"]["name"])
            self._buffer.append(message["mark"]["name"])
            if self.keep_audio:
                self.received.append(message["mark"]["name"])
        elif event == "clear":
            self.stats.clears += 1
            self.stats.clear_times.append(now)
            pending = [item for item in self._buffer if isinstance(item, str)]
            self._buffer.clear()
            self._pending_starts.clear()
            if self._current is not None:
                self._current.outcome = "cleared"
                self._current.ended = now
                self._current = None
            for name in pending:
                self._spawn_echo(name)

    def _spawn_echo(self, name: str) -> None:
        self.mark_echoes.append((time.monotonic(), name))
        self.stats.marks_echoed += 1
        task = asyncio.ensure_future(self._echo(name))
        self._tasks.append(task)

    async def _echo(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self.send_json({"event": "mark", "sequenceNumber": self._next_seq(),
                                  "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _playback(self) -> None:
        """Play one frame per 20 ms of wall clock; echo marks as playback reaches them."""
        started = time.monotonic()
        played_slots = 0
        while True:
            due = int((time.monotonic() - started) / FRAME_S)
            while played_slots < due:
                played_slots += 1
                self._play_one_slot()
            await asyncio.sleep(FRAME_S)

    def _play_one_slot(self) -> None:
        now = time.monotonic()
        # Marks at the head of the buffer are reached without consuming a slot.
        while self._buffer and isinstance(self._buffer[0], str):
            self._reach_mark(self._buffer.popleft(), now)
        if self._buffer:
            frame = self._buffer.popleft()
            assert isinstance(frame, bytes)
            if self._current is not None:
                if self._current.started_playing is None:
                    self._current.started_playing = now
                self._current.frames += 1
            if self.keep_audio:
                self.heard += frame
            while self._buffer and isinstance(self._buffer[0], str):
                self._reach_mark(self._buffer.popleft(), now)
            return
        if self._current is not None and self._current.started_playing is not None:
            self._current.underrun_ms += FRAME_S * 1000
            if not getattr(self._current, "_in_gap", False):
                self._current.underruns += 1
            self._current._in_gap = True  # type: ignore[attr-defined]
        if self.keep_audio:
            self.heard += SILENCE
        return

    def _reach_mark(self, name: str, now: float) -> None:
        if self._current is not None:
            self._current._in_gap = False  # type: ignore[attr-defined]
            if name.endswith("-end"):
                self._current.outcome = "played"
                self._current.ended = now
                self._current = None
                if any(isinstance(item, bytes) for item in self._buffer):
                    # The next utterance's frames were already buffered behind this end mark.
                    received = self._pending_starts.popleft() if self._pending_starts else now
                    self._current = HeardUtterance(first_frame_received=received)
                    self.stats.utterances.append(self._current)
        self._spawn_echo(name)


def validate_outbound(raw: str, stream_sid: str) -> str | None:
    """Twilio's rules for what a server may send on a Media Stream; None if the message is valid."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        return "non-JSON text (Twilio warning 31951)"
    if not isinstance(message, dict):
        return "message is not a JSON object"
    event = message.get("event")
    expected: dict[str, Iterable[str]] = {
        "media": ("event", "streamSid", "media"),
        "mark": ("event", "streamSid", "mark"),
        "clear": ("event", "streamSid"),
    }
    if event not in expected:
        return f"unknown event {event!r}"
    if set(message) != set(expected[event]):
        return f"{event}: fields {sorted(message)} != {sorted(expected[event])} (warning 31951)"
    if message["streamSid"] != stream_sid:
        return f"{event}: wrong streamSid {message['streamSid']!r}"
    if event == "media":
        media = message["media"]
        if not isinstance(media, dict) or set(media) != {"payload"}:
            return f"media: media object fields {media!r}"
        try:
            frame = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            return "media: payload is not valid base64"
        if len(frame) != FRAME_BYTES:
            return f"media: payload is {len(frame)} bytes, expected {FRAME_BYTES}"
    if event == "mark":
        mark = message["mark"]
        if not isinstance(mark, dict) or set(mark) != {"name"} or not isinstance(mark["name"], str):
            return f"mark: mark object {mark!r}"
    return None
