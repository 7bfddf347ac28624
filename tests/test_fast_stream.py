"""The lean ``/media-stream`` listener (picows, telephony/twilio/picows_socket.py) and the inbound
media fast path (telephony/twilio/media_scan.py): the same calls as over the ASGI route, Twilio emulated
over a real WebSocket, every outbound message validated by the emulator."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import string
from types import SimpleNamespace

import httpx
import pytest
from picows import WSCloseCode, WSMsgType

from telephony.media_stream import handle_stream
from telephony.testing.bridge_harness import RunningBridge
from telephony.testing.twilio_emulator import TwilioEmulator
from telephony.twilio.media_scan import scan_media
from telephony.twilio.picows_socket import MAX_INBOX, PicowsSocket, frame_header
from telephony.twilio.protocol import MAX_PAYLOAD_BYTES, Media, ProtocolError, base64_limit, parse_inbound
from tests.test_call_e2e import bridge_on, open_call, twiml_parameters


def fast_bridge(**overrides: object):  # type: ignore[no-untyped-def]
    """The bridge with the lean listener on its own port (tests/test_call_e2e.py: bridge_on)."""
    return bridge_on("lean", **overrides)


async def open_fast_call(rb: RunningBridge, url: str, client: httpx.AsyncClient, call_sid: str,
                         query: str = "", *, signed: bool = False) -> TwilioEmulator:
    return await open_call(rb, client, call_sid, query, signed_handshake=signed, url=url)


@pytest.mark.slow
@pytest.mark.parametrize("signed", [False, True], ids=["token", "signature"])
async def test_greeting_over_the_lean_listener_has_valid_frames_and_marks(signed: bool) -> None:
    async with fast_bridge() as (rb, url), httpx.AsyncClient() as client:
        call = await open_fast_call(rb, url, client, "CA2", "?greeting=Hello%20caller.", signed=signed)
        assert await call.wait_for(lambda: call.played_utterances(), timeout=10)
        await call.hang_up()
        assert call.stats.invalid == []  # every message exactly Twilio's shape, 160-byte frames
        utterance = call.played_utterances()[0]
        assert utterance.frames >= 10
        assert utterance.underruns == 0
        assert any(name.endswith("-end") for name in call.stats.mark_names)
        assert call.stats.marks_echoed >= 1


@pytest.mark.slow
async def test_the_lean_listener_authenticates_like_the_asgi_route() -> None:
    async with fast_bridge() as (rb, url), httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA3")
        _, params = twiml_parameters(response.text)
        forged = TwilioEmulator(url, call_sid="CA3", custom_parameters=params,
                                headers={"X-Twilio-Signature": "forged"})
        await forged.connect(send_start=False)
        assert await forged.wait_closed(5)
        assert forged.stats.close_code == 1008
        no_token = TwilioEmulator(url, call_sid="CA4", custom_parameters={"greeting": "Hi."})
        await no_token.connect()
        assert await no_token.wait_closed(5)
        assert no_token.stats.close_code == 1008
        assert no_token.stats.media_received == 0
        assert rb.bridge.calls == {}


@pytest.mark.slow
async def test_other_paths_on_the_stream_port_are_404() -> None:
    async with fast_bridge() as (_, url), httpx.AsyncClient() as client:
        response = await client.get(url.replace("ws://", "http://").replace("/media-stream", "/twiml"))
        assert response.status_code == 404


# ---- units ----------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


async def test_frames_sent_in_one_loop_pass_leave_in_one_write() -> None:
    sock = PicowsSocket(SimpleNamespace(), SimpleNamespace(headers={}), set(), handler=handle_stream)
    transport = _Recorder()
    sock._transport = SimpleNamespace(underlying_transport=transport)  # type: ignore[assignment]
    messages = ['{"event":"media","streamSid":"MZ1","media":{"payload":"' + "A" * 216 + '"}}'] * 3
    for text in messages:
        await sock.send_text(text)
    assert transport.writes == []  # corked until the loop's next pass
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
    expected = b"".join(frame_header(len(m)) + m.encode() for m in messages)
    assert transport.writes[0] == expected
    assert expected[:4] == b"\x81\x7e" + len(messages[0]).to_bytes(2, "big")  # unmasked text frame


def test_frame_header_lengths() -> None:
    assert frame_header(5) == b"\x81\x05"
    assert frame_header(300) == b"\x81\x7e\x01\x2c"
    assert frame_header(70000) == b"\x81\x7f" + (70000).to_bytes(8, "big")


def _media(payload: str, **overrides: str) -> dict[str, object]:
    media = {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": payload}
    return {"event": "media", "sequenceNumber": "3", "streamSid": "MZ1", "media": {**media, **overrides}}


def test_scan_media_agrees_with_the_full_parser_on_twilio_shaped_messages() -> None:
    payload = base64.b64encode(bytes(range(160))).decode()
    for raw in (json.dumps(_media(payload)), json.dumps(_media(payload), separators=(",", ":"))):
        scanned = scan_media(raw)
        assert scanned is not None
        assert scanned[0] == "MZ1"
        assert base64.b64decode(scanned[1]) == parse_inbound(raw).payload  # type: ignore[union-attr]


_COMPACT = json.dumps(_media("AAAA"), separators=(",", ":"))


@pytest.mark.parametrize("raw", [
    json.dumps(_media("AAAA=")),  # surplus padding: the full parser reports it
    json.dumps(_media("AAA")),  # length not a multiple of 4
    json.dumps(_media("AAAA====")),  # surplus padding Python 3.11's strict mode lets through
    json.dumps(_media("")),
    json.dumps(_media("A" * (base64_limit(MAX_PAYLOAD_BYTES) + 4))),  # oversize
    json.dumps(_media("////")).replace("/", "\\/"),  # escaped '/'s: JSON's job
    json.dumps(_media("AAAA", extra="x")),
    json.dumps(_media("AAAA", track="Inbound")),
    json.dumps(_media("AAAA", track="in-bound")),
    json.dumps(_media("AAAA", chunk="-1")),
    json.dumps(_media("AAAA", chunk="1" * 19)),
    json.dumps(_media("AAAA", timestamp="²")),  # a digit to str.isdigit, not to Twilio
    json.dumps(_media("AAAA")).replace('"MZ1"', '"MZ\\u0031"'),  # escapes: JSON's job
    json.dumps(_media("AAAA")).replace('"MZ1"', '"MZé"'),
    json.dumps(_media("AAAA")).replace('"MZ1"', '"MZ_1"'),
    json.dumps(_media("AAAA")).replace('"MZ1"', '""'),
    json.dumps({"event": "media", "streamSid": "MZ1", "sequenceNumber": "3",  # other field order
                "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": "AAAA"}}),
    _COMPACT + " ",
    " " + _COMPACT,
    _COMPACT[:-1],
    _COMPACT + "}",
    _COMPACT.replace('"AAAA"', '"AA"AA"'),
    json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": "x"}}),
    b"binary",
    None,
])
def test_scan_media_leaves_anything_unusual_to_the_full_parser(raw: str | bytes | None) -> None:
    assert scan_media(raw) is None


def test_scan_media_on_mutated_messages_agrees_with_the_full_parser_or_defers_to_it() -> None:
    """Fuzz: one or two characters of a Twilio media message inserted, deleted or replaced. What
    the scan accepts and strictly decodes must be exactly what the full parser makes of it; the
    rest (None, or a payload strict decoding refuses) goes to the full parser anyway."""
    rng = random.Random(11)
    alphabet = string.printable + "é²\u2028"
    base = [json.dumps(_media(base64.b64encode(bytes(range(i, i + 12))).decode()), separators=seps)
            for i in range(3) for seps in ((",", ":"), (", ", ": "))]
    accepted = 0
    for _ in range(20_000):
        raw = rng.choice(base)
        for _ in range(rng.randint(1, 2)):
            at = rng.randrange(len(raw) + 1)
            op = rng.randrange(3)
            if op == 0:
                raw = raw[:at] + rng.choice(alphabet) + raw[at:]
            elif op == 1:
                raw = raw[:at] + raw[at + 1:]
            else:
                raw = raw[:at] + rng.choice(alphabet) + raw[at + 1:]
        scanned = scan_media(raw)
        if scanned is None:
            continue
        try:
            audio = binascii.a2b_base64(scanned[1], strict_mode=True)
        except binascii.Error:
            with pytest.raises(ProtocolError):
                parse_inbound(raw)
            continue
        accepted += 1
        parsed = parse_inbound(raw)
        assert isinstance(parsed, Media), raw
        assert (parsed.stream_sid, parsed.payload) == (scanned[0], audio), raw
    assert accepted > 500  # the fuzz did reach the accepting path (harmless digit changes, ...)


class _TextFrame:
    """What the listener reads of a picows text frame."""

    msg_type = WSMsgType.TEXT

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def get_payload_as_utf8_text(self) -> str:
        return self.payload.decode("utf-8")


class _FakeWSTransport:
    def __init__(self) -> None:
        self.underlying_transport = _Recorder()
        self.closed_with: list[object] = []

    def send_close(self, code: object, message: bytes = b"") -> None:
        self.closed_with.append(code)

    def disconnect(self, graceful: bool = True) -> None:
        pass


async def test_a_handler_that_stops_reading_gets_its_socket_closed_not_an_unbounded_inbox() -> None:
    tasks: set[asyncio.Task[None]] = set()
    sock = PicowsSocket(SimpleNamespace(), SimpleNamespace(headers={}), tasks, handler=handle_stream)
    transport = _FakeWSTransport()
    sock._transport = transport  # type: ignore[assignment]
    frame = _TextFrame(b'{"event":"connected"}')
    for _ in range(MAX_INBOX + 5):
        sock.on_ws_frame(transport, frame)  # type: ignore[arg-type]
    await asyncio.gather(*tasks)
    assert len(sock._inbox) == MAX_INBOX
    assert transport.closed_with == [WSCloseCode.TRY_AGAIN_LATER]


async def test_invalid_utf8_closes_with_1007() -> None:
    tasks: set[asyncio.Task[None]] = set()
    sock = PicowsSocket(SimpleNamespace(), SimpleNamespace(headers={}), tasks, handler=handle_stream)
    transport = _FakeWSTransport()
    sock._transport = transport  # type: ignore[assignment]
    sock.on_ws_frame(transport, _TextFrame(b"\xff\xfe"))  # type: ignore[arg-type]
    await asyncio.gather(*tasks)
    assert transport.closed_with == [WSCloseCode.INVALID_TEXT]
    assert not sock._inbox


@pytest.mark.parametrize("lean", [False, True])
async def test_a_bug_in_a_running_call_closes_its_stream_1011_with_a_traceback(
        lean: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The session's catch-all ends that call only, logs the traceback, and tells Twilio it was an
    internal error (1011), on either listener."""
    from telephony.caller_side import CallerSide
    from tests.test_call_e2e import open_call

    def buggy_dtmf(self: CallerSide, digit: str) -> None:
        raise KeyError("a bug on a key press")

    monkeypatch.setattr(CallerSide, "on_dtmf", buggy_dtmf)
    async with fast_bridge() as (rb, url), httpx.AsyncClient() as client:
        call = (await open_fast_call(rb, url, client, "CA91") if lean
                else await open_call(rb, client, "CA91"))
        assert await call.wait_for(lambda: bool(rb.bridge.calls), 5)  # running: the lean listener pushes
        await call.send_dtmf("5")
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1011
        assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)
        assert await call.wait_for(lambda: not rb.bridge.calls, 5)
