"""What each Twilio message means to a running call (telephony/twilio/inbound.py)."""

from __future__ import annotations

import base64
import json

from telephony.twilio.inbound import InboundRouter
from tts_core.audio.telephony_format import SILENCE_FRAME

SID = "MZ1"
FRAME = bytes(range(160))
PAYLOAD = base64.b64encode(FRAME).decode()


class Sink:
    def __init__(self, hears: bool = True) -> None:
        self.hears = hears
        self.got: list[tuple[str, object]] = []

    def hears_caller(self) -> bool:
        return self.hears

    def on_caller_audio(self, mulaw: bytes) -> None:
        self.got.append(("audio", mulaw))

    def on_mark(self, name: str) -> None:
        self.got.append(("mark", name))

    def on_dtmf(self, digit: str) -> None:
        self.got.append(("dtmf", digit))

    def on_protocol_error(self, violation: str, detail: str) -> None:
        self.got.append(("error", violation))


def twilio_media(stream_sid: str = SID, **extra: str) -> str:
    """As Twilio sends it: the shape the fast path recognises."""
    return json.dumps({"event": "media", "sequenceNumber": "3", "streamSid": stream_sid,
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": PAYLOAD,
                                 **extra}}, separators=(",", ":"))


def test_media_on_both_paths_reaches_the_call_decoded_and_is_counted() -> None:
    sink = Sink()
    router = InboundRouter(SID, sink)
    assert router.handle(twilio_media())  # fast path
    assert router.handle(twilio_media(extra="x"))  # an unusual shape: the full parser
    assert sink.got == [("audio", FRAME), ("audio", FRAME)]
    assert router.inbound_frames == 2


def test_media_nobody_hears_is_counted_but_not_decoded() -> None:
    sink = Sink(hears=False)
    router = InboundRouter(SID, sink)
    assert router.handle(twilio_media())
    assert sink.got == [] and router.inbound_frames == 1


def test_media_of_another_stream_is_a_protocol_error_on_both_paths() -> None:
    sink = Sink()
    router = InboundRouter(SID, sink)
    router.handle(twilio_media("MZ2"))
    router.handle(twilio_media("MZ2", extra="x"))
    assert sink.got == [("error", "wrong_stream_sid")] * 2 and router.inbound_frames == 0


def test_marks_dtmf_and_stop() -> None:
    sink = Sink()
    router = InboundRouter(SID, sink)
    assert router.handle(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "g0-u1-end"}}))
    assert router.handle(json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "#"}}))
    assert not router.stopped
    assert not router.handle(json.dumps({"event": "stop", "streamSid": SID, "stop": {}}))
    assert router.stopped
    assert sink.got == [("mark", "g0-u1-end"), ("dtmf", "#")]


def test_bad_messages_and_a_second_start_are_counted_and_the_call_goes_on() -> None:
    sink = Sink()
    router = InboundRouter(SID, sink)
    start = {"event": "start", "streamSid": SID, "start": {
        "streamSid": SID, "callSid": "CA1", "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}}
    assert router.handle("not json")
    assert router.handle(b"\x00binary")
    assert router.handle(json.dumps(start))
    assert sink.got == [("error", "malformed_json"), ("error", "binary_frame"), ("error", "duplicate_start")]


def test_digital_silence_reaches_the_call_undecoded_and_anything_else_decoded() -> None:
    """Twilio's silent frame (160 x 0xFF) is recognised by its base64 text; one byte off is not."""
    sink = Sink()
    router = InboundRouter(SID, sink)
    near = b"\xff" * 159 + b"\xfe"
    for frame in (SILENCE_FRAME, near, b"\x7f" * 160):
        message = json.loads(twilio_media())
        message["media"]["payload"] = base64.b64encode(frame).decode()
        assert router.handle(json.dumps(message, separators=(",", ":")))
    assert sink.got == [("audio", SILENCE_FRAME), ("audio", near), ("audio", b"\x7f" * 160)]
    assert sink.got[0][1] is SILENCE_FRAME, "the shared frame, not a decode"


def test_a_twilio_shaped_message_with_a_bad_payload_is_reported_by_the_full_parser() -> None:
    """The scan leaves the base64 alphabet to the strict decode; a payload that fails it is the
    full parser's to report (and nothing reaches the call)."""
    sink = Sink()
    router = InboundRouter(SID, sink)
    for payload in ("%%%%", "AA==AA==", "AA*A", "-_-_", "AA A"):
        raw = twilio_media().replace(PAYLOAD, payload)
        assert router.handle(raw)
    assert sink.got == [("error", "invalid_base64")] * 5 and router.inbound_frames == 0
