"""A running call's inbound messages, routed: what each Twilio message means for the call.

The call (telephony/call_session.py) only hears events: caller audio, a mark echoed, a key pressed,
the stream stopped, a protocol violation. Which message is which, the media fast path and the
checks on streamSid are Twilio knowledge and stay here.
"""

from __future__ import annotations

import binascii
from base64 import b64encode
from binascii import a2b_base64
from typing import Protocol

from telephony.twilio.media_scan import scan_media
from telephony.twilio.protocol import (
    Dtmf,
    InboundMessage,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    parse_inbound,
)
from tts_core.audio.telephony_format import SILENCE_FRAME

SILENCE_PAYLOAD = b64encode(SILENCE_FRAME).decode()
"""A frame of digital silence (160 x 0xFF) as Twilio's base64: recognised without decoding it (the
bulk of a caller's media on a muted or silence-suppressed leg, and of the load generator's)."""


class InboundSink(Protocol):
    """What the call does with each kind of message. None of these may block."""

    def hears_caller(self) -> bool:
        """Whether caller audio is listened to right now: a frame nobody hears is not decoded."""

    def on_caller_audio(self, mulaw: bytes) -> None:
        """One frame of the caller's μ-law audio."""

    def on_mark(self, name: str) -> None:
        """Twilio echoed a mark we sent (played, or dropped by a clear)."""

    def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key."""

    def on_protocol_error(self, violation: str, detail: str) -> None:
        """A message we cannot use; the call goes on."""


class InboundRouter:
    """Turns each raw message of one stream into a call on its ``InboundSink``."""

    def __init__(self, stream_sid: str, sink: InboundSink) -> None:
        self.stream_sid = stream_sid
        self._sink = sink
        self.inbound_frames = 0
        """Caller media frames received on this stream."""
        self.stopped = False
        """Twilio sent ``stop``: the stream is over."""

    def handle(self, raw: str | bytes) -> bool:
        """Route one message; False once the stream is over (``stop``). Never blocks."""
        media = scan_media(raw)  # the common case, without json.loads (media_scan.py)
        if media is not None:
            stream_sid, payload = media
            if stream_sid != self.stream_sid:
                self._sink.on_protocol_error("wrong_stream_sid", stream_sid)
                return True
            if not self._sink.hears_caller():  # decode only if heard
                self.inbound_frames += 1
                return True
            audio: bytes | None = SILENCE_FRAME
            if payload != SILENCE_PAYLOAD:
                try:  # strict: the scan left the base64 alphabet to this decode
                    audio = a2b_base64(payload, strict_mode=True)
                except binascii.Error:  # the full parser below says what is wrong with it
                    audio = None
            if audio is not None:
                self.inbound_frames += 1
                self._sink.on_caller_audio(audio)
                return True
        try:
            message = parse_inbound(raw)
        except ProtocolError as exc:
            self._sink.on_protocol_error(exc.violation, str(exc))
            return True
        return self._route(message)

    def _route(self, message: InboundMessage) -> bool:
        match message:
            case Media(stream_sid=sid) if sid and sid != self.stream_sid:
                self._sink.on_protocol_error("wrong_stream_sid", sid)
            case Media(payload=payload):
                self.inbound_frames += 1
                self._sink.on_caller_audio(payload)
            case Mark(name=name):
                self._sink.on_mark(name)
            case Dtmf(digit=digit):
                self._sink.on_dtmf(digit)
            case Stop():
                self.stopped = True
                return False
            case Start():
                self._sink.on_protocol_error("duplicate_start", "start received twice; ignored")
        return True  # ``connected`` mid-call: harmless, ignored
