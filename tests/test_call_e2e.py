"""End-to-end: the real server on loopback, this test acting as Twilio (and, for the demo agent,
as the caller) over a real WebSocket."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from telephony.testing.asgi_server import free_port_url
from telephony.testing.bridge_harness import RunningBridge, running_bridge
from telephony.testing.twilio_emulator import TwilioEmulator
from tests.conftest import eventually
from tts_core.audio import pcm16_to_mulaw
from tts_core.audio.mulaw import float_to_pcm16
from tts_core.engines.synthetic import SyntheticEngine, speechlike

LONG_GREETING = ("Welcome to the long greeting. " * 6).strip()


def twiml_parameters(xml: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(xml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, xml
    return stream.attrib["url"], {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


LISTENERS = ["asgi", "lean"]
"""Where /media-stream is served: the ASGI route on the HTTP port, or the lean picows listener on its
own port (``--stream-port``). Call scenarios that must hold on both are parametrized over them."""


@asynccontextmanager
async def bridge_on(listener: str, **overrides: object) -> AsyncIterator[tuple[RunningBridge, str]]:
    """The bridge and the stream URL Twilio reaches it on. For ``lean`` PUBLIC_URL stays the HTTP
    port's, as behind a proxy that routes /media-stream to the stream port (signatures are over
    PUBLIC_URL)."""
    if listener == "lean":
        port = int(free_port_url().rsplit(":", 1)[1])
        async with running_bridge(stream_port=port, **overrides) as rb:
            yield rb, f"ws://127.0.0.1:{port}/media-stream"
    else:
        async with running_bridge(**overrides) as rb:
            yield rb, rb.stream_url


async def open_call(rb: RunningBridge, client: httpx.AsyncClient, call_sid: str, query: str = "",
                    *, signed_handshake: bool = False, token: str | None = None,
                    url: str | None = None) -> TwilioEmulator:
    """The webhook, then the stream it names (or ``url``: the same stream on another listener)."""
    response = await rb.webhook(client, call_sid, query)
    assert response.status_code == 200, response.text
    public_url, params = twiml_parameters(response.text)
    if token is not None:
        params["token"] = token
    headers = {"X-Twilio-Signature": rb.sign(public_url)} if signed_handshake else {}
    emulator = TwilioEmulator(url or public_url, call_sid=call_sid, stream_sid="MZ" + call_sid[2:],
                              custom_parameters=params, headers=headers)
    await emulator.connect()
    return emulator


def session_of(rb: RunningBridge, call_sid: str):  # type: ignore[no-untyped-def]
    return next(s for s in rb.bridge.calls.values() if s.info.call_sid == call_sid)


def caller_speech(seconds: float) -> bytes:
    audio = speechlike(seconds, 8000, seed=7) * 0.8
    return pcm16_to_mulaw(float_to_pcm16(audio))


@pytest.mark.slow
async def test_webhook_answers_connect_stream_with_parameters_and_token() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA1", "?voice=synthetic&preset=fast&greeting=Hi%20there")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/xml")
        url, params = twiml_parameters(response.text)
        assert url == rb.ws_url + "/media-stream"  # no query string: Twilio strips it
        assert params["voice"] == "synthetic"
        assert params["preset"] == "fast"
        assert params["greeting"] == "Hi there"
        assert params["agentUrl"] == "demo"
        assert len(params["token"]) >= 20


@pytest.mark.slow
async def test_webhook_refuses_a_bad_signature_with_403_json() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA1", signed=False)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "invalid_signature"


@pytest.mark.slow
async def test_webhook_rejects_unknown_preset_with_422() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA1", "?preset=nope")
        assert response.status_code == 422
        assert "nope" in response.json()["error"]["message"]


@pytest.mark.slow
async def test_webhook_rejects_a_voice_that_cannot_exist_with_422() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA1", "?voice=nosuchvoice")
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "unknown_voice"


@pytest.mark.slow
async def test_a_voice_id_with_a_trailing_newline_is_a_422_not_a_500() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA1", "?voice=joe%0A")
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_voice"


@pytest.mark.slow
async def test_a_request_cannot_make_the_server_import_python_code() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA1", "?agentUrl=python:os:abort")
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_agent"
        # nor through the stream's parameters, which a client could write itself
        call = await open_call(rb, client, "CA2", "?greeting=")
        await call.hang_up()
        forged_params = {k: v for k, v in call.custom_parameters.items() if k != "token"}
        forged_params["agentUrl"] = "python:os:abort"  # even with a token that covers it
        forged = TwilioEmulator(call.url, call_sid="CA2", stream_sid="MZ2",
                                custom_parameters={**forged_params,
                                                   "token": rb.bridge.tokens.issue("CA2", forged_params)})
        await forged.connect()
        assert await forged.wait_closed(5)
        assert forged.stats.close_code == 1008


@pytest.mark.slow
async def test_a_default_voice_that_does_not_exist_stops_the_server_at_start() -> None:
    from telephony.config import ConfigError, settings_from_env
    from telephony.services import Bridge

    settings = settings_from_env({}, insecure_dev=True, engine="synthetic", default_voice="nosuchvoice")
    with pytest.raises(ConfigError, match="VOICE_BRIDGE_DEFAULT_VOICE"):
        await Bridge.start(settings, engine=SyntheticEngine())


@pytest.mark.slow
@pytest.mark.parametrize("signed", [False, True], ids=["token", "signature"])
async def test_greeting_is_played_with_valid_frames_and_marks(signed: bool) -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA2", "?greeting=Hello%20caller.", signed_handshake=signed)
        assert await call.wait_for(lambda: call.played_utterances(), timeout=10)
        await call.hang_up()
        assert call.stats.invalid == []
        utterance = call.played_utterances()[0]
        assert utterance.frames >= 10
        assert utterance.underruns == 0
        assert any(name.endswith("-end") for name in call.stats.mark_names)
        assert call.stats.marks_echoed >= 1


@pytest.mark.slow
async def test_invalid_handshake_signature_is_closed_with_1008() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA3")
        url, params = twiml_parameters(response.text)
        call = TwilioEmulator(url, call_sid="CA3", custom_parameters=params,
                              headers={"X-Twilio-Signature": "forged"})
        await call.connect(send_start=False)
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1008
        assert call.stats.media_received == 0


@pytest.mark.slow
@pytest.mark.parametrize("token", ["", "not-a-real-token"])
async def test_unsigned_stream_without_a_valid_token_is_closed(token: str) -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA4", token=token)
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1008
        assert call.stats.media_received == 0
        assert rb.bridge.calls == {}, "no call session may start before the token is checked"


@pytest.mark.slow
async def test_stream_token_is_single_use_and_bound_to_the_call() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        first = await open_call(rb, client, "CA5", "?greeting=Hi.")
        assert await first.wait_for(lambda: first.stats.media_received > 0)
        replay = TwilioEmulator(rb.stream_url, call_sid="CA5", stream_sid="MZ5b",
                                custom_parameters=first.custom_parameters)
        await replay.connect()
        assert await replay.wait_closed(5)
        assert replay.stats.close_code == 1008
        response = await rb.webhook(client, "CA6")
        _, params = twiml_parameters(response.text)
        other_call = TwilioEmulator(rb.stream_url, call_sid="CA7", custom_parameters=params)
        await other_call.connect()
        assert await other_call.wait_closed(5)
        assert other_call.stats.close_code == 1008
        await first.hang_up()


@pytest.mark.slow
async def test_start_that_never_comes_is_closed() -> None:
    async with running_bridge(start_timeout_s=0.3) as rb:
        call = TwilioEmulator(rb.stream_url)
        await call.connect(send_start=False)
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1008


@pytest.mark.slow
async def test_unsupported_media_format_is_refused() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA8")
        _, params = twiml_parameters(response.text)
        call = TwilioEmulator(rb.stream_url, call_sid="CA8", custom_parameters=params,
                              media_format={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})
        await call.connect()
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1003


@pytest.mark.slow
@pytest.mark.parametrize("listener", LISTENERS)
async def test_demo_agent_reads_back_dtmf_and_pound_ends_the_stream(listener: str) -> None:
    async with bridge_on(listener) as (rb, url), httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA9", "?greeting=Hi.", url=url)
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 1)
        await call.send_dtmf("5")
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 2)
        await call.send_dtmf("#")
        assert await call.wait_closed(10), "pound should end the stream after the goodbye"
        assert len(call.played_utterances()) >= 3, "goodbye must be heard before the stream closes"
        assert call.stats.close_code == 1000
        assert call.stats.invalid == []


@pytest.mark.slow
@pytest.mark.parametrize("listener", LISTENERS)
async def test_malformed_messages_are_counted_and_the_call_goes_on(listener: str) -> None:
    async with bridge_on(listener) as (rb, url), httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA10", "?greeting=", url=url)
        # once the call runs, the lean listener pushes frames to the session: that path is the one tested
        assert await call.wait_for(lambda: any(s.info.call_sid == "CA10" for s in rb.bridge.calls.values()))
        await call.send_raw("{not json")
        await call.send_raw(b"\x00\x01binary")
        await call.send_json({"event": "bogus"})
        await call.send_json({"event": "media", "streamSid": call.stream_sid,
                              "media": {"payload": "%%%not-base64%%%"}})
        await call.send_json({"event": "media", "streamSid": call.stream_sid,
                              "media": {"payload": "A" * 100_000}})
        await call.send_json({"event": "media", "sequenceNumber": "9", "streamSid": "MZother",
                              "media": {"track": "inbound", "chunk": "1", "timestamp": "20",
                                        "payload": "/w=="}})  # the fast path's shape
        await call.send_dtmf("1")
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 1), "call must go on"
        errors = session_of(rb, "CA10").protocol_errors
        assert errors.get("wrong_stream_sid") == 1
        assert sum(errors.values()) >= 6
        await call.hang_up()


@pytest.mark.slow
@pytest.mark.parametrize("listener", LISTENERS)
async def test_barge_in_clears_twilio_and_stops_generation(listener: str) -> None:
    engine = SyntheticEngine(realtime_factor=0.3)
    async with bridge_on(listener, engine=engine, twilio_auth_token=None, insecure_dev=True) as (rb, url):
        call = TwilioEmulator(url, call_sid="CA11",
                              custom_parameters={"greeting": LONG_GREETING})
        await call.connect()
        assert await call.wait_for(lambda: call.stats.media_received > 30)
        speech_started = asyncio.get_running_loop().time()
        await call.stream_audio(caller_speech(0.6))
        assert await call.wait_for(lambda: call.stats.clears >= 1, timeout=5)
        reaction = call.stats.clear_times[0] - speech_started
        assert reaction < 0.6, f"clear after {reaction:.3f}s of caller speech"
        session = session_of(rb, "CA11")
        assert session.barge_ins == 1
        assert session.inbound_frames >= 25
        assert rb.bridge.engine.busy_slots == 0
        # once the interrupted reply's turn is recorded, its sending is over; the close that follows
        # the hang-up comes after anything the bridge sent before it
        await eventually(lambda: session.turns, what="the interrupted reply's turn recorded")
        await call.hang_up()
        before_clear, after_clear = media_around_the_first_clear(call)
        assert after_clear == 0, "no audio of the interrupted reply leaks out"
        assert session.turns[0]["outcome"] == "interrupted"
        assert session.turns[0]["frames"] <= before_clear


def media_around_the_first_clear(call: TwilioEmulator) -> tuple[int, int]:
    """Media messages the emulator received before and after the bridge's first ``clear``."""
    events = [raw.split('"event":"', 1)[1].split('"', 1)[0] for _, raw in call.outbound_log]
    cleared_at = events.index("clear")
    return events[:cleared_at].count("media"), events[cleared_at:].count("media")


@pytest.mark.slow
@pytest.mark.parametrize("listener", LISTENERS)
async def test_disconnect_mid_utterance_leaves_no_task_and_no_busy_engine_slot(listener: str) -> None:
    engine = SyntheticEngine(realtime_factor=0.5)
    # Insecure mode and no webhook: the greeting is rendered live by the call, not pre-rendered.
    async with bridge_on(listener, engine=engine, twilio_auth_token=None, insecure_dev=True) as (rb, url):
        before = {t.get_name() for t in asyncio.all_tasks()}
        call = TwilioEmulator(url, call_sid="CA12",
                              custom_parameters={"greeting": LONG_GREETING})
        await call.connect()
        assert await call.wait_for(lambda: call.stats.media_received > 10)
        assert engine.busy_slots == 1
        await call.close()  # the socket drops without a stop message
        await eventually(lambda: not rb.bridge.calls and engine.busy_slots == 0, what="the call freed")

        def leftover() -> list[str]:
            return [t.get_name() for t in asyncio.all_tasks()
                    if t.get_name() not in before and ("CA12" in t.get_name() or
                                                      t.get_name().startswith(("speaker", "render")))]

        await eventually(lambda: not leftover(), what="every task of the call ended")


@pytest.mark.slow
async def test_pre_rendered_greeting_starts_within_milliseconds_of_start() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA13", "?greeting=Thanks%20for%20calling.")
        _, params = twiml_parameters(response.text)
        # the webhook's background render finishes while Twilio dials
        await eventually(lambda: rb.bridge.phrases.stats()["entries"] == 1, what="the greeting cached")
        call = TwilioEmulator(rb.stream_url, call_sid="CA13", custom_parameters=params)
        await call.connect()
        assert await call.wait_for(lambda: call.stats.utterances)
        ttfa = call.stats.utterances[0].first_frame_received - call.start_sent_at
        assert ttfa < 0.5  # loose bound for CI; the benchmark script measures the real p95
        assert rb.bridge.phrases.stats()["hits"] >= 1
        await call.hang_up()


@pytest.mark.slow
async def test_recording_writes_the_call_as_recorded_call_jsonl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    async with running_bridge(record_dir=tmp_path) as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA14", "?greeting=Hi.")
        assert await call.wait_for(lambda: call.played_utterances())
        await call.send_dtmf("3")
        await call.stream_audio(caller_speech(0.1))
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 2)
        await call.hang_up()
        await eventually(lambda: rb.bridge.calls == {})
    (path,) = tmp_path.glob("*.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["sample_rate"] == 8000
    events = [(e["from"], e["msg"].get("event") or e["msg"].get("type")) for e in lines[1:-1]]
    assert ("twilio", "start") in events and ("twilio", "dtmf") in events
    assert ("twilio", "media") in events and ("twilio", "stop") in events
    spoken = [e["msg"]["token"] for e in lines[1:-1] if e["from"] == "agent"]
    # The greeting travels in start.customParameters (as ConversationRelay's welcomeGreeting), so a
    # replay must not hear it twice: only what the agent said is an agent event.
    assert spoken == ["You pressed 3."]
    assert lines[-1] == {"type": "trailer", "dropped_lines": 0}


async def test_a_peer_that_stops_reading_stalls_the_stream_once_and_nothing_waits_on_it() -> None:
    from telephony.media_stream import StreamSender

    sent: list[str] = []
    stalls: list[bool] = []
    blocked = asyncio.Event()  # the socket's buffer is full and stays full

    async def send(text: str) -> None:
        if len(sent) >= 3:
            await blocked.wait()
        sent.append(text)

    sender = StreamSender(send, lambda: True, stall_s=0.05, on_stall=lambda: stalls.append(True))
    for n in range(3):
        await sender(f"m{n}")
    await asyncio.wait_for(sender("m3"), 1)  # gives up after stall_s instead of hanging
    await asyncio.wait_for(sender("m4"), 0.01)  # later sends return at once
    assert sent == ["m0", "m1", "m2"] and sender.stalled and stalls == [True]


@pytest.mark.slow
async def test_a_twilio_side_that_stops_reading_fails_the_utterance_and_ends_the_call(
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10 finding 5: the peer stops reading mid-greeting while the kernel's buffers still
    have room (so no send ever blocks). Its marks stop coming back: the greeting is reported
    failed, not played, and the call ends at once, not on the ping timeout."""
    import json
    import logging

    caplog.set_level(logging.INFO)
    greeting = " ".join(f"Sentence number {n} of a greeting that goes on." for n in range(12))
    async with running_bridge(twilio_auth_token=None, insecure_dev=True, mark_timeout_s=0.5) as rb:
        call = TwilioEmulator(rb.stream_url, call_sid="CA70", custom_parameters={"greeting": greeting})
        await call.connect()
        assert await call.wait_for(lambda: call.stats.media_received >= 20)
        await call.stop_reading()
        stopped = asyncio.get_running_loop().time()
        await eventually(lambda: rb.bridge.calls == {}, timeout=6, what="the call ended")
        took = asyncio.get_running_loop().time() - stopped
        await call.close()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("call {")]
    summary = json.loads(line[len("call "):])
    assert summary["end_reason"] == "twilio stopped playing audio"
    assert [t["outcome"] for t in summary["turns"]] == ["failed"]
    # the greeting is ~30 s of audio: the call ends within a few seconds of the peer stopping
    assert took < 5.0
    assert any("not echoed" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


class _DeafSocket:
    """A Starlette WebSocket stand-in for a Twilio side whose buffers are full: after ``sendable``
    messages every send and the close block forever, and no message ever arrives after start."""

    def __init__(self, bridge, start: dict, sendable: int) -> None:  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        from starlette.websockets import WebSocketState

        self.app = SimpleNamespace(state=SimpleNamespace(bridge=bridge))
        self.headers: dict[str, str] = {}
        self.application_state = self.client_state = WebSocketState.CONNECTED
        self._inbox = [{"type": "websocket.receive", "text": json.dumps(m)}
                       for m in ({"event": "connected"}, start)]
        self.sendable = sendable
        self.sent = 0
        self.close_attempts: list[tuple[int, str]] = []

    async def accept(self) -> None:
        return None

    async def receive(self) -> dict:
        if self._inbox:
            return self._inbox.pop(0)
        await asyncio.Event().wait()  # Twilio sends nothing more
        raise AssertionError("unreachable")

    async def send_text(self, text: str) -> None:
        if self.sent >= self.sendable:
            await asyncio.Event().wait()  # the transport is paused: this send never completes
        self.sent += 1

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_attempts.append((code, reason))
        await asyncio.Event().wait()  # the close frame cannot be written either


@pytest.mark.slow
async def test_a_send_that_stalls_ends_the_call_at_once_not_on_the_next_message(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10 finding 5, the write-buffer side: when sends block (the transport over its
    high-water mark), the call used to wait for Twilio's next message or the ping timeout."""
    import logging

    from telephony import media_stream
    from telephony.config import Settings
    from telephony.services import Bridge

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(media_stream, "SEND_STALL_S", 0.3)
    monkeypatch.setattr(media_stream, "CLOSE_TIMEOUT_S", 0.2)
    settings = Settings(twilio_auth_token=None, insecure_dev=True, engine="synthetic",
                        mark_timeout_s=60)
    bridge = await Bridge.start(settings, engine=SyntheticEngine())
    try:
        start = {"event": "start", "streamSid": "MZ75", "start": {
            "streamSid": "MZ75", "callSid": "CA75", "customParameters": {"greeting": LONG_GREETING},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
        ws = _DeafSocket(bridge, start, sendable=20)
        await asyncio.wait_for(media_stream.media_stream(ws), 5)  # type: ignore[arg-type]
        assert bridge.calls == {}
        assert ws.close_attempts and ws.close_attempts[0][0] == 1011
    finally:
        await bridge.aclose()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("call {")]
    assert json.loads(line[len("call "):])["end_reason"] == "twilio stopped reading"
