"""The messages Twilio sends on a Media Stream (the call's inbound track), in Twilio's shapes.

``connected`` and ``start`` open the stream; caller audio goes out as one 160-byte μ-law ``media``
message per 20 ms, numbered as Twilio numbers them; then ``dtmf`` and ``stop``. The transport is the
subclass's (``send_raw``): the emulator sends over its WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from tts_core.audio.telephony_format import FRAME_BYTES, FRAME_MS, FRAME_S, MULAW_SILENCE, SILENCE_FRAME


class TwilioCallerMessages:
    """Builds and paces what Twilio sends; ``send_raw`` delivers it."""

    def __init__(self, *, call_sid: str, stream_sid: str, account_sid: str,
                 custom_parameters: dict[str, str] | None, media_format: dict[str, Any] | None) -> None:
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.account_sid = account_sid
        self.custom_parameters = custom_parameters or {}
        self.media_format = media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                             "channels": 1}
        self.start_sent_at: float | None = None
        """When ``start`` went out (``time.monotonic``): the origin of a call's timings."""
        self._seq = 0
        self._chunk = 0

    async def send_raw(self, data: str | bytes) -> None:
        raise NotImplementedError

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message))

    async def send_connected(self) -> None:
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    async def send_start(self) -> None:
        self.start_sent_at = time.monotonic()
        await self.send_json({
            "event": "start", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid,
                      "callSid": self.call_sid, "tracks": ["inbound"],
                      "customParameters": self.custom_parameters, "mediaFormat": self.media_format},
        })

    async def send_media(self, payload: bytes) -> None:
        self._chunk += 1
        await self.send_json({
            "event": "media", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": str(self._chunk),
                      "timestamp": str(self._chunk * FRAME_MS),
                      "payload": base64.b64encode(payload).decode()},
        })

    async def stream_audio(self, mulaw: bytes, *, realtime: bool = True) -> None:
        """Send caller audio as 20 ms media messages on Twilio's timing."""
        started = time.monotonic()
        for index in range(0, len(mulaw), FRAME_BYTES):
            frame = mulaw[index : index + FRAME_BYTES]
            await self.send_media(frame.ljust(FRAME_BYTES, bytes([MULAW_SILENCE])))
            if realtime:
                delay = started + (index // FRAME_BYTES + 1) * FRAME_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def send_silence(self, seconds: float) -> None:
        await self.stream_audio(SILENCE_FRAME * int(seconds / FRAME_S))

    async def send_dtmf(self, digit: str) -> None:
        await self.send_json({"event": "dtmf", "streamSid": self.stream_sid,
                              "sequenceNumber": self._next_seq(),
                              "dtmf": {"track": "inbound_track", "digit": digit}})

    async def send_stop(self) -> None:
        await self.send_json({"event": "stop", "sequenceNumber": self._next_seq(),
                              "streamSid": self.stream_sid,
                              "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)
