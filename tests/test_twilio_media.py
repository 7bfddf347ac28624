"""Twilio Media Streams wire protocol: what we accept from Twilio and exactly what we send back."""

from __future__ import annotations

import base64
import json

import pytest

from telephony.twilio.protocol import (
    MAX_PAYLOAD_BYTES,
    Connected,
    Dtmf,
    Mark,
    Media,
    OutboundEncoder,
    ProtocolError,
    SendClear,
    SendMark,
    SendMedia,
    Start,
    Stop,
    base64_limit,
    clear_message,
    mark_message,
    media_message,
    parse_inbound,
)

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
FRAME = bytes(range(160))


def msg(**fields) -> str:
    return json.dumps(fields)


def media_msg(payload, **media_fields) -> str:
    body = {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload, **media_fields}
    return msg(event="media", sequenceNumber="3", streamSid=SID, media=body)


def start_msg(**overrides) -> str:
    body = {
        "accountSid": "AC123", "streamSid": SID, "callSid": "CA123", "tracks": ["inbound"],
        "customParameters": {"token": "tok", "voice": "joe"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    body.update(overrides)
    return msg(event="start", sequenceNumber="1", streamSid=SID, start=body)


def error_kind(raw, **kwargs) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_inbound(raw, **kwargs)
    return info.value.violation


# ---- inbound: the messages Twilio documents -------------------------------------------------------
def test_connected():
    parsed = parse_inbound('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    assert parsed == Connected(event="connected", protocol="Call", version="1.0.0")


def test_start_carries_call_identity_parameters_and_format():
    parsed = parse_inbound(start_msg())
    assert isinstance(parsed, Start)
    assert parsed.stream_sid == SID
    assert parsed.call_sid == "CA123"
    assert parsed.account_sid == "AC123"
    assert parsed.tracks == ["inbound"]
    assert parsed.custom_parameters == {"token": "tok", "voice": "joe"}
    assert parsed.media_format.encoding == "audio/x-mulaw"
    assert parsed.media_format.sample_rate == 8000
    assert parsed.media_format.channels == 1
    assert parsed.is_supported_format()


def test_start_takes_stream_sid_from_top_level_when_body_lacks_it():
    raw = json.loads(start_msg())
    del raw["start"]["streamSid"]
    assert parse_inbound(json.dumps(raw)).stream_sid == SID


def test_start_custom_parameters_become_strings_and_may_be_absent():
    parsed = parse_inbound(start_msg(customParameters={"n": 5, "empty": None}))
    assert parsed.custom_parameters == {"n": "5", "empty": ""}
    raw = json.loads(start_msg())
    del raw["start"]["customParameters"]
    assert parse_inbound(json.dumps(raw)).custom_parameters == {}
    assert parse_inbound(start_msg(customParameters=None)).custom_parameters == {}


@pytest.mark.parametrize("fmt", [
    {"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 1},
    {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
    {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
])
def test_only_mulaw_8k_mono_is_supported(fmt):
    assert not parse_inbound(start_msg(mediaFormat=fmt)).is_supported_format()


def test_media_decodes_payload_and_counters_given_as_strings():
    parsed = parse_inbound(media_msg(base64.b64encode(FRAME).decode()))
    assert isinstance(parsed, Media)
    assert parsed.payload == FRAME
    assert parsed.stream_sid == SID
    assert parsed.track == "inbound"
    assert parsed.chunk == 1
    assert parsed.timestamp == 5


def test_media_counters_may_be_ints_or_absent():
    parsed = parse_inbound(media_msg("", chunk=7, timestamp=140))
    assert (parsed.chunk, parsed.timestamp, parsed.payload) == (7, 140, b"")
    raw = json.loads(media_msg(""))
    del raw["media"]["chunk"], raw["media"]["timestamp"], raw["media"]["track"]
    parsed = parse_inbound(json.dumps(raw))
    assert (parsed.chunk, parsed.timestamp, parsed.track) == (None, None, "inbound")


def test_dtmf_mark_stop():
    dtmf = parse_inbound(msg(event="dtmf", streamSid=SID, sequenceNumber="5",
                             dtmf={"track": "inbound_track", "digit": "#"}))
    assert dtmf == Dtmf(stream_sid=SID, digit="#")
    mark = parse_inbound(msg(event="mark", sequenceNumber="4", streamSid=SID,
                             mark={"name": "g1-u2-end"}))
    assert mark == Mark(stream_sid=SID, name="g1-u2-end")
    stop = parse_inbound(msg(event="stop", sequenceNumber="5", streamSid=SID,
                             stop={"accountSid": "AC123", "callSid": "CA123"}))
    assert isinstance(stop, Stop)
    assert (stop.stream_sid, stop.call_sid, stop.account_sid) == (SID, "CA123", "AC123")
    assert parse_inbound(msg(event="stop", streamSid=SID)).call_sid == ""


def test_unknown_extra_fields_are_ignored():
    raw = json.loads(start_msg(newThing={"x": 1}))
    raw["futureField"] = True
    raw["start"]["mediaFormat"]["bitDepth"] = 8
    assert parse_inbound(json.dumps(raw)).call_sid == "CA123"
    assert parse_inbound(media_msg("", futureField=1)).payload == b""
    assert parse_inbound(msg(event="mark", streamSid=SID, mark={"name": "m", "extra": 1})).name == "m"


def test_bytes_text_is_not_accepted_as_json():
    assert error_kind(start_msg().encode()) == "binary_frame"
    assert error_kind(bytearray(b"{}")) == "binary_frame"
    assert error_kind(None) == "binary_frame"


# ---- inbound: every error kind ---------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["", "not json", "{", '["event","media"]', '"media"', "null",
                                 "[" * 100_000])
def test_malformed_json(raw):
    assert error_kind(raw) == "malformed_json"


@pytest.mark.parametrize("raw", ['{"event":"speak"}', "{}", '{"event":null}', '{"event":["media"]}'])
def test_unknown_event(raw):
    assert error_kind(raw) == "unknown_event"


@pytest.mark.parametrize("raw", [
    msg(event="media", streamSid=5, media={"payload": ""}),
    msg(event="media", streamSid=SID),
    msg(event="media", streamSid=SID, media="AAAA"),
    msg(event="media", streamSid=SID, media={"track": "inbound"}),
    media_msg(123),
    media_msg("", track=1),
    media_msg("", chunk="one"),
    media_msg("", timestamp="-5"),
    media_msg("", timestamp=True),
    media_msg("", chunk=1.5),
    msg(event="start", streamSid=SID),
    start_msg(callSid=""),
    start_msg(callSid=None),
    start_msg(mediaFormat=None),
    start_msg(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": "fast"}),
    start_msg(tracks="inbound"),
    start_msg(customParameters=["a"]),
    msg(event="start", start={**json.loads(start_msg())["start"], "streamSid": ""}),
    msg(event="mark", streamSid=SID),
    msg(event="mark", streamSid=SID, mark={}),
    msg(event="mark", streamSid=SID, mark={"name": 7}),
    msg(event="dtmf", streamSid=SID, dtmf={"digit": "12"}),
    msg(event="dtmf", streamSid=SID, dtmf={"digit": "x"}),
    msg(event="dtmf", streamSid=SID, dtmf={}),
    msg(event="connected", protocol=["Call"]),
])
def test_invalid_field(raw):
    assert error_kind(raw) == "invalid_field"


@pytest.mark.parametrize("payload", [
    "AAA",              # missing padding
    "AA==AA==",         # data after padding
    "AAAA====",         # surplus padding
    "AAAA=",            # surplus padding Python 3.11's strict mode lets through
    "AAAA==",
    "AA AA",            # whitespace
    "AAAA\n",           # newline (non-strict decoders skip it)
    "-_-_",             # URL-safe alphabet
    "AA*A",             # junk
    "ÿÿÿÿ",             # non-ASCII
])
def test_invalid_base64_is_refused_strictly(payload):
    assert error_kind(media_msg(payload)) == "invalid_base64"


def test_oversize_payload_is_refused_before_decoding():
    limit = base64_limit(MAX_PAYLOAD_BYTES)
    assert limit == 21336
    # Too long to be in range, and not even base64: size is judged first.
    assert error_kind(media_msg("*" * (limit + 1))) == "oversize_payload"
    just_fits = base64.b64encode(bytes(MAX_PAYLOAD_BYTES)).decode()
    assert len(just_fits) == limit
    assert parse_inbound(media_msg(just_fits)).payload == bytes(MAX_PAYLOAD_BYTES)


def test_oversize_limit_is_configurable_and_exact_in_bytes():
    exact = media_msg(base64.b64encode(FRAME).decode())
    assert parse_inbound(exact, max_payload_bytes=160).payload == FRAME
    # 161 bytes encodes to the same 216 chars as 162 would; the decoded length decides.
    assert error_kind(media_msg(base64.b64encode(bytes(161)).decode()), max_payload_bytes=160) \
        == "oversize_payload"
    assert error_kind(media_msg(base64.b64encode(bytes(320)).decode()), max_payload_bytes=160) \
        == "oversize_payload"


def test_protocol_error_is_a_value_error_with_a_kind():
    with pytest.raises(ValueError, match="unknown event"):
        parse_inbound('{"event":"nope"}')


# ---- outbound: exact shapes --------------------------------------------------------------------------
def test_media_message_has_exactly_twilios_fields():
    text = media_message(SID, FRAME)
    assert json.loads(text) == {
        "event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(FRAME).decode()},
    }
    assert base64.b64decode(json.loads(text)["media"]["payload"], validate=True) == FRAME


def test_mark_message_has_exactly_twilios_fields():
    assert json.loads(mark_message(SID, "g3-u7-end")) == {
        "event": "mark", "streamSid": SID, "mark": {"name": "g3-u7-end"},
    }


def test_clear_message_has_exactly_twilios_fields():
    assert json.loads(clear_message(SID)) == {"event": "clear", "streamSid": SID}


def test_outbound_is_compact_text():
    assert clear_message(SID) == '{"event":"clear","streamSid":"' + SID + '"}'
    prefix = '{"event":"media","streamSid":"' + SID + '","media":{"payload":"'
    assert media_message(SID, FRAME).startswith(prefix)


@pytest.mark.parametrize("frame", [b"", bytes(159), bytes(161), bytes(320)])
def test_media_frames_are_exactly_20ms(frame):
    with pytest.raises(ValueError, match="160"):
        media_message(SID, frame)


@pytest.mark.parametrize("awkward", ['MZ"quoted"', "MZ\\back", "MZ\nline", "MZ\u00e9\u2028",
                                     "</script>"])
def test_values_needing_json_escapes_round_trip(awkward):
    enc = OutboundEncoder(awkward)
    assert json.loads(enc.media(FRAME))["streamSid"] == awkward
    assert json.loads(enc.clear()) == {"event": "clear", "streamSid": awkward}
    assert json.loads(enc.mark(awkward)) == {
        "event": "mark", "streamSid": awkward, "mark": {"name": awkward},
    }


def test_outbound_round_trips_through_the_emulators_validator():
    from telephony.testing.twilio_emulator import validate_outbound

    enc = OutboundEncoder(SID)
    for text in (enc.media(FRAME), enc.mark("g0-u1-s0"), enc.clear()):
        assert validate_outbound(text, SID) is None


# ---- outbound: typed messages ----------------------------------------------------------------------
def test_typed_outbound_messages_encode_to_exactly_twilios_documented_shapes():
    encoder = OutboundEncoder(SID)
    assert json.loads(encoder.encode(SendMedia(FRAME))) == {
        "event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(FRAME).decode()}}
    assert json.loads(encoder.encode(SendMark("g1-u2-end"))) == {
        "event": "mark", "streamSid": SID, "mark": {"name": "g1-u2-end"}}
    assert json.loads(encoder.encode(SendClear())) == {"event": "clear", "streamSid": SID}


def test_typed_media_keeps_the_frame_size_rule():
    with pytest.raises(ValueError, match="160 bytes"):
        OutboundEncoder(SID).encode(SendMedia(FRAME[:100]))
