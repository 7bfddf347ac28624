"""Issue 10, finding 6: input that used to give a 500 with tracebacks, or end a call, is refused
for that request or message only, with a clear 4xx or protocol error and no traceback in the log.

Huge integers (over Python's 4,300-digit int limit) in JSON, lone surrogates, non-ASCII close
reasons over 123 bytes, and XML-illegal characters in TwiML parameters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import xml.etree.ElementTree as ET

import httpx
import pytest

from telephony.relay_protocol import RelayProtocolError, parse_agent_message
from telephony.testing.bridge_harness import running_bridge
from telephony.testing.twilio_emulator import TwilioEmulator
from telephony.twilio.protocol import ProtocolError, parse_inbound
from telephony.untrusted import close_reason

BIG = "1" * 5000  # a JSON integer literal over the 4,300-digit limit
API_KEY = "operator-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert bad == [], [r.getMessage()[:200] for r in bad]


def assert_error_shape(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body["error"]) >= {"code", "message"}


HTTP_CASES = [
    ("/warmup", '{"voice": ' + BIG + "}"),
    ("/warmup", '{"preset": "fast", "x": -' + BIG + "}"),
    ("/warmup", "[" + BIG + "]"),
    ("/warmup", '{"voice": "\\ud800"}'),
    ("/preload", '{"voices": [' + BIG + "]}"),
    ("/preload", "[" + BIG + "]"),
    ("/preload", '{"voices": ["\\ud800"]}'),
    ("/preload", '["ok", "\\udfff"]'),
    ("/preload", '{"\\ud800": 1}'),
    ("/preload", b'{"voices": ["\xed\xa0\x80"]}'),  # a surrogate encoded as (invalid) UTF-8
    ("/v1/audio/speech", '{"model": "tts-1", "voice": "synthetic", "input": "hi", "speed": ' + BIG
     + "}"),
    ("/v1/audio/speech", '{"model": "tts-1", "voice": "synthetic", "input": "hi \\ud800"}'),
]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "body"), HTTP_CASES,
                         ids=[f"{p}-{i}" for i, (p, _) in enumerate(HTTP_CASES)])
async def test_bad_json_bodies_are_a_4xx_without_a_traceback(
        path: str, body: str | bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(api_key=API_KEY) as rb, httpx.AsyncClient() as client:
        response = await client.post(rb.base_url + path, content=body,
                                     headers={**AUTH, "Content-Type": "application/json"})
        assert_error_shape(response)
        health = await client.get(rb.base_url + "/health")
        assert health.status_code == 200
    no_tracebacks(caplog)


TWILIO_CASES = [
    '{"event": "media", "streamSid": "MZ9", "media": {"payload": "/w==", "chunk": ' + BIG + "}}",
    '{"event": "media", "streamSid": "MZ9", "media": {"payload": "/w==", "timestamp": ' + BIG + "}}",
    '{"event": "media", "sequenceNumber": ' + BIG + ', "streamSid": "MZ9", "media": {"payload": "/w=="}}',
    '{"event": "media", "streamSid": "MZ9", "media": {"payload": "/w==", "chunk": "' + BIG + '"}}',
    '{"event": "media", "streamSid": "MZ9", "media": {"payload": "/w==", "timestamp": "'
    + "9" * 40 + '"}}',
    '{"event": "mark", "streamSid": "MZ9", "mark": {"name": "g' + "9" * 4000 + '-u1-end"}}',
    '{"event": "dtmf", "streamSid": "MZ9", "dtmf": {"digit": "\\ud800"}}',
    '{"event": "start", "streamSid": "MZ9", "start": {"streamSid": "MZ9", "callSid": "CA1", '
    '"customParameters": {"greeting": "hi \\ud800"}, "mediaFormat": {"encoding": "audio/x-mulaw", '
    '"sampleRate": 8000}}}',
]


@pytest.mark.parametrize("raw", TWILIO_CASES, ids=[str(i) for i in range(len(TWILIO_CASES))])
def test_twilio_messages_with_huge_numbers_are_protocol_errors(raw: str) -> None:
    try:
        message = parse_inbound(raw)
    except ProtocolError:
        return
    assert type(message).__name__ == "Mark"  # a foreign mark name parses; it is ignored later


@pytest.mark.slow
async def test_huge_numbers_in_a_live_call_are_counted_and_the_call_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(twilio_auth_token=None, insecure_dev=True, record_dir=None) as rb:
        call = TwilioEmulator(rb.stream_url, call_sid="CA61", stream_sid="MZ9",
                              custom_parameters={"greeting": "Hi.", "agentUrl": "demo"})
        await call.connect()
        for raw in TWILIO_CASES:
            await call.send_raw(raw)
        await call.send_dtmf("4")  # the call still works: the demo agent reads the digit back
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 2, timeout=10)
        session = next(iter(rb.bridge.calls.values()))
        assert sum(session.protocol_errors.values()) >= len(TWILIO_CASES) - 1
        await call.hang_up()
    no_tracebacks(caplog)


@pytest.mark.slow
async def test_a_huge_number_before_start_closes_with_a_protocol_error_not_a_crash(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(twilio_auth_token=None, insecure_dev=True) as rb:
        call = TwilioEmulator(rb.stream_url)
        await call.connect(send_start=False)
        await call.send_raw('{"event": "connected", "protocol": "Call", "version": ' + BIG + "}")
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1008
    no_tracebacks(caplog)


AGENT_CASES = [
    '{"type": "text", "token": "hi", "last": true, "extra": ' + BIG + "}",
    '{"type": "play", "source": "http://example.com/a.wav", "loop": ' + BIG + "}",
    '{"type": "text", "token": "hi \\ud800", "last": true}',
    '{"type": "end", "handoffData": {"\\udc00": 1}}',
]


@pytest.mark.parametrize("raw", AGENT_CASES, ids=[str(i) for i in range(len(AGENT_CASES))])
def test_agent_messages_with_huge_numbers_or_lone_surrogates_are_protocol_errors(raw: str) -> None:
    with pytest.raises(RelayProtocolError):
        parse_agent_message(raw)


@pytest.mark.parametrize("text", ["é" * 200, "日本" * 80, "a" * 122 + "é", "😀" * 40, "plain",
                                  "x\ud800y" * 50])
def test_close_reasons_are_cut_by_utf8_bytes_at_a_character_boundary(text: str) -> None:
    reason = close_reason(text)
    data = reason.encode("utf-8")
    assert len(data) <= 123
    assert text.startswith(reason) or "\ud800" in text


@pytest.mark.slow
async def test_a_long_non_ascii_setup_error_closes_with_its_code_not_1006(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(twilio_auth_token=None, insecure_dev=True) as rb:
        call = TwilioEmulator(rb.stream_url, custom_parameters={"preset": "é" * 100})
        await call.connect()
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1008, call.stats
        assert call.stats.close_reason.startswith("call setup failed")
    no_tracebacks(caplog)


@pytest.mark.slow
async def test_an_agent_end_with_a_long_non_ascii_reason_closes_the_stream_cleanly(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(twilio_auth_token=None, insecure_dev=True) as rb:
        call = TwilioEmulator(rb.stream_url, custom_parameters={"greeting": ""})
        await call.connect()
        assert await call.wait_for(lambda: rb.bridge.calls, timeout=5)
        session = next(iter(rb.bridge.calls.values()))
        await session.end("agent ended: " + "ü" * 150)
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1000
        assert len(call.stats.close_reason.encode()) <= 123
    no_tracebacks(caplog)


REFUSED = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x0e", "\x1b", "\x1f", "\ufffe", "\uffff"]
ALLOWED = ["\t", "\n", "\r", "\x7f", "\x85", "\x9f", "é", "\u2028", "😀", "<", "&", '"']


@pytest.mark.slow
@pytest.mark.parametrize("char", REFUSED + ALLOWED, ids=[f"U+{ord(c):04X}" for c in REFUSED + ALLOWED])
async def test_twiml_is_well_formed_xml_for_every_character_class(char: str) -> None:
    from urllib.parse import quote

    async with running_bridge() as rb, httpx.AsyncClient() as client:
        greeting = f"Hello{char}there"
        response = await rb.webhook(client, "CA62", "?greeting=" + quote(greeting, safe=""),
                                    From=f"+1555{char}0001")
        if char in REFUSED:
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "invalid_greeting"
            return
        assert response.status_code == 200, response.text
        root = ET.fromstring(response.text)  # raises if not well-formed
        params = {p.attrib["name"]: p.attrib["value"] for p in root.iter("Parameter")}
        expected = greeting.replace("\r\n", "\n").replace("\r", "\n") if char == "\r" else greeting
        assert params["greeting"] in (greeting, expected)


@pytest.mark.slow
@pytest.mark.parametrize("char", REFUSED, ids=[f"U+{ord(c):04X}" for c in REFUSED])
async def test_control_characters_in_twilio_form_fields_are_dropped_from_twiml(char: str) -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA63", "?greeting=Hi", From=f"+1555{char}0001",
                                    To=f"+1{char}", Direction=f"in{char}bound")
        assert response.status_code == 200, response.text
        root = ET.fromstring(response.text)
        params = {p.attrib["name"]: p.attrib["value"] for p in root.iter("Parameter")}
        assert params["from"] == "+15550001" and params["direction"] == "inbound"


def test_the_recorder_skips_a_message_with_a_huge_number(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from telephony.recording import CallRecorder
    from telephony.twilio.protocol import Start

    start = Start.model_validate(json.loads(
        '{"streamSid": "MZ1", "callSid": "CA1", "mediaFormat": {"encoding": "audio/x-mulaw", '
        '"sampleRate": 8000}}'))

    async def run() -> None:
        recorder = CallRecorder.open(tmp_path, start)
        recorder.twilio_message('{"event": "media", "media": {"chunk": ' + BIG + "}}")
        await recorder.aclose()

    asyncio.run(run())
