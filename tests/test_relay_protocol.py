"""ConversationRelay messages: what we send an agent application and what we accept from it."""

from __future__ import annotations

import json

import pytest

from telephony.relay_protocol import (
    Dtmf,
    End,
    Error,
    Interrupt,
    Language,
    Play,
    Prompt,
    RelayMessageTooLarge,
    RelayProtocolError,
    SendDigits,
    Setup,
    Text,
    parse_agent_frame,
    parse_agent_message,
    serialize,
)
from tts_core.errors import InvalidInput, TooLarge


def parse(**fields):
    return parse_agent_message(json.dumps(fields))


def refused(raw) -> str:
    with pytest.raises(RelayProtocolError) as info:
        parse_agent_message(raw)
    return str(info.value)


# ---- to the agent --------------------------------------------------------------------------------
def test_setup_has_twilios_field_names_including_from():
    setup = Setup(
        session_id="VX1", account_sid="AC1", call_sid="CA1", parent_call_sid="", from_="+18005550100",
        to="+18005550101", forwarded_from="+18005550102", call_type="PSTN", caller_name="",
        direction="inbound", call_status="RINGING", custom_parameters={"callReference": "bar"},
    )
    assert json.loads(setup.to_json()) == {
        "type": "setup", "sessionId": "VX1", "accountSid": "AC1", "parentCallSid": "", "callSid": "CA1",
        "from": "+18005550100", "to": "+18005550101", "forwardedFrom": "+18005550102",
        "callType": "PSTN", "callerName": "", "direction": "inbound", "callStatus": "RINGING",
        "customParameters": {"callReference": "bar"},
    }


def test_setup_accepts_the_wire_alias_for_from():
    setup = Setup.model_validate({"sessionId": "VX1", "callSid": "CA1", "from": "+1555"})
    assert setup.from_ == "+1555"
    assert json.loads(setup.to_json())["from"] == "+1555"
    assert "from_" not in setup.to_json()


def test_prompt_dtmf_interrupt_error_shapes():
    assert json.loads(Prompt(voice_prompt="hello there", lang="en-US", last=True).to_json()) == {
        "type": "prompt", "voicePrompt": "hello there", "lang": "en-US", "last": True,
    }
    assert json.loads(Dtmf(digit="1").to_json()) == {"type": "dtmf", "digit": "1"}
    interrupt = Interrupt(utterance_until_interrupt="Welcome to", duration_until_interrupt_ms=1820)
    assert json.loads(interrupt.to_json()) == {
        "type": "interrupt", "utteranceUntilInterrupt": "Welcome to", "durationUntilInterruptMs": 1820,
    }
    assert json.loads(Error(description="bad").to_json()) == {"type": "error", "description": "bad"}


def test_outbound_is_compact_and_omits_none():
    class WithOptional(Prompt):
        note: str | None = None

    text = WithOptional(voice_prompt="hi").to_json()
    assert " " not in text.replace("hi", "")
    assert "note" not in text


# ---- from the agent ------------------------------------------------------------------------------
def test_text_defaults():
    assert parse(type="text", token="Hello") == Text(
        type="text", token="Hello", last=False, lang=None, interruptible=True, preemptible=False)


def test_text_with_every_field():
    message = parse(type="text", token=" world", last=True, lang="sv-SE", interruptible=False,
                    preemptible=True)
    assert (message.token, message.last, message.lang) == (" world", True, "sv-SE")
    assert (message.interruptible, message.preemptible) == (False, True)


def test_empty_token_is_a_valid_text():
    assert parse(type="text", token="", last=True).token == ""


@pytest.mark.parametrize(("given", "expected"), [
    (True, True), (False, False), ("true", True), ("false", False), ("TRUE", True), ("False", False),
])
def test_booleans_may_be_json_or_strings(given, expected):
    message = parse(type="text", token="x", last=given, interruptible=given, preemptible=given)
    assert message.last is message.interruptible is message.preemptible is expected
    play = parse(type="play", source="https://a.example/x.wav", interruptible=given, preemptible=given)
    assert play.interruptible is play.preemptible is expected


def test_play():
    message = parse(type="play", source="https://example.com/audio/welcome.mp3")
    assert message == Play(type="play", source="https://example.com/audio/welcome.mp3", loop=1,
                           interruptible=True, preemptible=False)
    assert parse(type="play", source="http://h:8080/a.wav?x=1", loop=3).loop == 3
    assert parse(type="play", source="HTTPS://h/a.wav", loop="2").loop == 2


def test_send_digits_language_end():
    assert parse(type="sendDigits", digits="9www4085551212#*W") == SendDigits(
        type="sendDigits", digits="9www4085551212#*W")
    assert parse(type="language", ttsLanguage="sv-SE", transcriptionLanguage="en-US") == Language(
        type="language", tts_language="sv-SE", transcription_language="en-US")
    assert parse(type="language", ttsLanguage="fr-FR").transcription_language is None
    assert parse(type="end") == End(type="end", handoff_data=None)
    handoff = json.dumps({"reasonCode": "live-agent-handoff"})
    assert parse(type="end", handoffData=handoff).handoff_data == handoff


def test_end_handoff_data_given_as_an_object_is_kept_as_json_text():
    message = parse(type="end", handoffData={"reasonCode": "done"})
    assert json.loads(message.handoff_data) == {"reasonCode": "done"}


def test_unknown_fields_from_agents_are_ignored():
    assert parse(type="text", token="a", someFutureFlag=1).token == "a"


# ---- from the agent: refusals --------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["", "nope", "{", "[1]", '"text"', "null"])
def test_bad_json_is_refused(raw):
    assert "JSON" in refused(raw)


def test_binary_is_refused():
    assert "binary" in refused(b'{"type":"text","token":"a"}')


@pytest.mark.parametrize("raw", ['{"token":"a"}', '{"type":"speak"}', '{"type":"setup"}', '{"type":5}',
                                 '{"type":"Text","token":"a"}'])
def test_unknown_type_is_refused_and_the_known_ones_are_listed(raw):
    text = refused(raw)
    assert "unknown message type" in text
    assert "sendDigits" in text


@pytest.mark.parametrize("fields", [
    {"type": "text"},
    {"type": "text", "token": 5},
    {"type": "text", "token": None},
    {"type": "text", "token": ["a"]},
    {"type": "text", "token": "a", "last": 1},
    {"type": "text", "token": "a", "last": "yes"},
    {"type": "text", "token": "a", "last": None},
    {"type": "text", "token": "a", "interruptible": "maybe"},
    {"type": "text", "token": "a", "preemptible": 0},
    {"type": "text", "token": "a", "lang": 3},
    {"type": "play"},
    {"type": "play", "source": "ftp://h/a.wav"},
    {"type": "play", "source": "file:///etc/passwd"},
    {"type": "play", "source": "https://"},
    {"type": "play", "source": "/relative.wav"},
    {"type": "play", "source": 5},
    {"type": "play", "source": "https://h/a.wav", "loop": -1},
    {"type": "play", "source": "https://h/a.wav", "loop": True},
    {"type": "play", "source": "https://h/a.wav", "loop": "many"},
    {"type": "play", "source": "https://h/a.wav", "interruptible": 1},
    {"type": "sendDigits"},
    {"type": "sendDigits", "digits": ""},
    {"type": "sendDigits", "digits": "12a"},
    {"type": "sendDigits", "digits": 123},
    {"type": "sendDigits", "digits": "1" * 65},
    {"type": "language", "ttsLanguage": 1},
])
def test_invalid_fields_are_refused_with_the_field_named(fields):
    text = refused(json.dumps(fields))
    assert text.startswith(f"invalid {fields['type']} message:")


def test_refusal_names_the_offending_field():
    assert "token" in refused('{"type":"text","token":5}')
    assert "source" in refused('{"type":"play","source":"ftp://x"}')
    assert "digits" in refused('{"type":"sendDigits","digits":"x"}')


def test_error_text_does_not_echo_huge_input():
    assert len(refused("x" * 100_000)) < 200


@pytest.mark.parametrize(("value", "expected"), [("speech", True), ("any", True), ("none", False),
                                                 ("dtmf", False), ("ANY", True)])
def test_interruptible_accepts_conversation_relays_newer_values(value: str, expected: bool) -> None:
    message = parse_agent_message(json.dumps({"type": "text", "token": "hi", "interruptible": value}))
    assert message.interruptible is expected


# ---- one place for wire text: serialize and parse_agent_frame ---------------------------------------
def test_serialize_gives_the_exact_compact_wire_text() -> None:
    assert serialize(Dtmf(digit="1")) == '{"type":"dtmf","digit":"1"}'
    assert serialize(Error(description="bad")) == '{"type":"error","description":"bad"}'
    assert json.loads(serialize(Setup(session_id="VX1", call_sid="CA1", from_="+1555")))["from"] == "+1555"


def test_a_frame_becomes_its_typed_message() -> None:
    message = parse_agent_frame('{"type":"play","source":"https://a.example/x.wav","loop":"2"}',
                                max_bytes=1024)
    assert message == Play(type="play", source="https://a.example/x.wav", loop=2)


def test_a_binary_frame_is_refused_as_binary() -> None:
    with pytest.raises(RelayProtocolError) as info:
        parse_agent_frame(b'{"type":"end"}', max_bytes=1024)
    assert info.value.message == "binary WebSocket frames are not supported; send JSON text messages"


def test_the_frame_limit_counts_utf8_bytes_not_characters() -> None:
    frame = json.dumps({"type": "text", "token": "é" * 300}, ensure_ascii=False)  # ~600 bytes
    assert isinstance(parse_agent_frame(frame, max_bytes=len(frame.encode())), Text)
    with pytest.raises(RelayMessageTooLarge) as info:
        parse_agent_frame(frame, max_bytes=len(frame))
    assert info.value.message == f"message too large: {len(frame.encode())} bytes (limit {len(frame)})"


def test_an_invalid_frame_is_refused_with_what_is_wrong() -> None:
    with pytest.raises(RelayProtocolError) as info:
        parse_agent_frame('{"type":"text","token":5}', max_bytes=1024)
    assert info.value.message.startswith("invalid message: invalid text message: token")


def test_protocol_errors_sit_in_the_error_tree() -> None:
    with pytest.raises(InvalidInput) as invalid:
        parse_agent_message("{")
    assert isinstance(invalid.value, ValueError)  # older ``except ValueError`` callers still work
    assert (invalid.value.kind, invalid.value.http_status, invalid.value.ws_close_code) == (
        "invalid_request", 400, 1008)
    with pytest.raises(TooLarge) as large:
        parse_agent_frame("x" * 10, max_bytes=5)
    assert isinstance(large.value, RelayProtocolError)
    assert (large.value.kind, large.value.http_status, large.value.ws_close_code) == (
        "too_large", 413, 1009)
