"""Twilio's side of a Media Stream, for end-to-end tests, the load test and the call simulator.

It connects like Twilio (optionally signing the handshake), sends ``connected`` and ``start``,
streams caller audio at 20 ms, and checks every outbound message against Twilio's documented shape.
What happens to the bot's audio once it arrives (the 20 ms playback clock, marks echoed when
reached, ``clear``) is Twilio's playback, modelled in twilio_playback.py; what the caller would hear
is kept for WAV output and timing analysis.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from telephony.testing.twilio_caller import TwilioCallerMessages
from telephony.testing.twilio_playback import EmulatorStats, HeardUtterance, TwilioPlayback
from tts_core.audio.mulaw import mulaw_to_pcm16, pcm16_to_mulaw
from tts_core.audio.telephony_format import FRAME_BYTES, FRAME_S, SILENCE_FRAME

SILENCE = SILENCE_FRAME
"""One 20 ms frame of μ-law digital silence, as a silent caller's phone sends it."""

__all__ = ["SILENCE", "EmulatorStats", "HeardUtterance", "TwilioEmulator", "validate_outbound"]


class TwilioEmulator(TwilioCallerMessages):
    """One call's Media Stream as Twilio opens and drives it (see the module docstring)."""

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
        super().__init__(call_sid=call_sid, stream_sid=stream_sid, account_sid=account_sid,
                         custom_parameters=custom_parameters, media_format=media_format)
        self.url = url
        self.headers = headers or {}
        self.keep_audio = keep_audio
        self.stats = EmulatorStats()
        self.playback = TwilioPlayback(self.stats, self, keep_audio=keep_audio)
        self.received: list[bytes | str] = []
        """Every media frame and mark name as received, in order (with ``keep_audio``)."""
        self.outbound_log: list[tuple[float, str]] = []
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()
        self.mark_echoes: list[tuple[float, str]] = []
        self.reading_stopped = False

    @property
    def heard(self) -> bytearray:
        """What the caller heard, 8 kHz μ-law, silence included, from the start message on."""
        return self.playback.heard

    @property
    def closed(self) -> bool:
        """The bridge closed the stream (or the connection dropped)."""
        return self._closed.is_set()

    # ---- connection ---------------------------------------------------------------------------------
    async def connect(self, *, send_start: bool = True) -> None:
        # No permessage-deflate: Twilio does not compress, and compression would charge the bridge
        # CPU that production never costs it.
        self._ws = await websockets.connect(self.url, additional_headers=self.headers,
                                            open_timeout=10, max_size=1 << 20, compression=None)
        self._tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self.playback.run())]
        await self.send_connected()
        if send_start:
            await self.send_start()

    async def send_raw(self, data: str | bytes) -> None:
        """Send, unless the bridge already closed the stream (then the message is dropped, as
        Twilio would drop it; ``stats.close_code`` says why)."""
        assert self._ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._ws.send(data)

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
    async def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0,
                       poll: float = 0.01) -> bool:
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
            self.playback.media(frame, now)
            if self.keep_audio:
                self.received.append(frame)
        elif event == "mark":
            self.stats.marks_received += 1
            self.stats.mark_names.append(message["mark"]["name"])
            self.playback.mark(message["mark"]["name"])
            if self.keep_audio:
                self.received.append(message["mark"]["name"])
        elif event == "clear":
            self.stats.clears += 1
            self.stats.clear_times.append(now)
            for name in self.playback.clear(now):
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

    # ---- PlaybackListener: what Twilio's playback reports -----------------------------------------
    def mark_reached(self, name: str) -> None:
        self._spawn_echo(name)

    def playing(self, utterance: HeardUtterance, now: float) -> None:
        """An utterance's first frame played (a hook for subclasses)."""

    def underrun(self, utterance: HeardUtterance, now: float) -> None:
        """A slot found the buffer empty mid-utterance (a hook for subclasses)."""

    def utterance_ended(self, utterance: HeardUtterance, now: float) -> None:
        """Playback reached an utterance's end mark (a hook for subclasses)."""


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
