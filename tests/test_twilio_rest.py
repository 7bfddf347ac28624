"""Hanging up through Twilio's REST API, against a loopback stand-in of it (tests/twilio_rest_standin.py).

The official ``twilio`` client is pointed at the stand-in with ``VOICE_BRIDGE_TWILIO_API_BASE_URL``
(the same setting serves Twilio-compatible APIs). Unit tests drive ``TwilioCalls`` directly with an
injected sleep (no real pauses); end-to-end tests run the real bridge with the Twilio emulator and
check the order that makes a goodbye audible: end mark echoed, then the REST request, then the
stream closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import ClassVar

import httpx
import pytest

from telephony.agents import Agent, CallControl, EndResult
from telephony.agents.demo import DemoAgent
from telephony.agents.relay_client import asks_for_hangup
from telephony.config import ConfigError, Settings, settings_from_env
from telephony.testing.asgi_server import free_port_url
from telephony.testing.bridge_harness import RunningBridge, running_bridge
from telephony.testing.twilio_emulator import TwilioEmulator
from telephony.twilio_rest import HangupOutcome, TwilioCalls, make_client
from tests.conftest import eventually
from tests.fake_call import FakeCall
from tests.test_call_e2e import open_call
from tests.test_relay_e2e import agent_app
from tests.twilio_rest_standin import (
    ACCOUNT_SID,
    ALREADY_ENDED,
    AUTH_TOKEN,
    OK,
    SERVER_ERROR,
    Reply,
    TwilioRestStandIn,
    twilio_rest_standin,
)

CALL_SID = "CA" + "c0ffee00" * 4


def call_sid(n: int) -> str:
    return f"CA{n:032x}"


def rest_settings(base_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "twilio_auth_token": AUTH_TOKEN, "public_url": "https://bridge.example.com",
        "twilio_account_sid": ACCOUNT_SID, "twilio_api_base_url": base_url,
        "engine": "synthetic", "stt": "off"}
    return Settings(**{**values, **overrides})


class Sleeps:
    """The injected sleep: records the backoff instead of waiting it."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def standin() -> AsyncIterator[TwilioRestStandIn]:
    async with twilio_rest_standin() as server:
        yield server


def calls_api(base_url: str, sleeps: Sleeps, **options: object) -> TwilioCalls:
    api = TwilioCalls.from_settings(rest_settings(base_url), sleep=sleeps, **options)
    assert api is not None
    return api


# ---- TwilioCalls against the stand-in ------------------------------------------------------------
@pytest.mark.slow
async def test_hang_up_posts_status_completed_for_the_call(standin: TwilioRestStandIn) -> None:
    api = calls_api(standin.url, Sleeps())
    try:
        result = await api.hang_up(CALL_SID)
    finally:
        api.close()
    assert result.outcome is HangupOutcome.HUNG_UP and result.attempts == 1 and result.ok
    [request] = standin.requests
    assert (request.account_sid, request.call_sid) == (ACCOUNT_SID, CALL_SID)
    assert request.form == {"Status": "completed"}
    assert (request.username, request.password) == (ACCOUNT_SID, AUTH_TOKEN)


async def test_an_api_key_pair_authenticates_instead_of_the_auth_token(standin: TwilioRestStandIn) -> None:
    key = "SK" + "5" * 32
    settings = rest_settings(standin.url, twilio_api_key=key, twilio_api_secret="key-secret")
    api = TwilioCalls(make_client(settings))
    try:
        assert (await api.hang_up(CALL_SID)).ok
    finally:
        api.close()
    [request] = standin.requests
    assert request.account_sid == ACCOUNT_SID
    assert (request.username, request.password) == (key, "key-secret")


@pytest.mark.slow
async def test_hang_up_runs_off_the_event_loop(standin: TwilioRestStandIn) -> None:
    standin.reply(Reply(delay_s=0.3))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    api = calls_api(standin.url, Sleeps())
    try:
        # the stand-in answers from this very event loop: an answer at all means it was free
        assert (await api.hang_up(CALL_SID)).ok
    finally:
        api.close()
        task.cancel()
    assert ticks > 0, "the event loop was blocked while the request ran"


@pytest.mark.parametrize("reply", [ALREADY_ENDED, Reply(404), Reply(400, 21220)],
                         ids=["404-20404", "404", "400-21220"])
async def test_an_already_ended_call_counts_as_hung_up_and_is_logged_once(
        standin: TwilioRestStandIn, reply: Reply, caplog: pytest.LogCaptureFixture) -> None:
    standin.reply(reply, default=SERVER_ERROR)
    sleeps = Sleeps()
    api = calls_api(standin.url, sleeps)
    with caplog.at_level(logging.INFO, logger="voice_bridge.twilio_rest"):
        try:
            result = await api.hang_up(CALL_SID)
        finally:
            api.close()
    assert result.outcome is HangupOutcome.ALREADY_ENDED and result.ok and result.attempts == 1
    assert len(standin.requests) == 1 and sleeps.delays == [], "already ended is not retried"
    lines = [r.getMessage() for r in caplog.records if r.name == "voice_bridge.twilio_rest"]
    assert len(lines) == 1 and "already ended" in lines[0], lines


async def test_server_errors_are_retried_with_backoff_until_one_succeeds(standin: TwilioRestStandIn) -> None:
    standin.reply(SERVER_ERROR, Reply(503, 20503))
    sleeps = Sleeps()
    api = calls_api(standin.url, sleeps)
    try:
        result = await api.hang_up(CALL_SID)
    finally:
        api.close()
    assert result.outcome is HangupOutcome.HUNG_UP and result.attempts == 3
    assert len(standin.requests) == 3
    assert sleeps.delays == [0.5, 1.0]


async def test_an_api_that_always_fails_is_tried_a_bounded_number_of_times(
        standin: TwilioRestStandIn, caplog: pytest.LogCaptureFixture) -> None:
    standin.reply(default=SERVER_ERROR)
    sleeps = Sleeps()
    api = calls_api(standin.url, sleeps)
    with caplog.at_level(logging.WARNING, logger="voice_bridge.twilio_rest"):
        try:
            result = await api.hang_up(CALL_SID)
        finally:
            api.close()
    assert result.outcome is HangupOutcome.FAILED and not result.ok
    assert result.attempts == 4 and len(standin.requests) == 4
    assert sleeps.delays == [0.5, 1.0, 2.0]
    assert "HTTP 500" in (result.error or "") and "20500" in (result.error or "")
    assert any(r.levelno == logging.ERROR and "failed after 4 attempts" in r.getMessage()
               for r in caplog.records)
    assert AUTH_TOKEN not in caplog.text


@pytest.mark.slow
async def test_a_request_that_times_out_is_retried(standin: TwilioRestStandIn) -> None:
    standin.reply(Reply(delay_s=3.0))
    sleeps = Sleeps()
    api = calls_api(standin.url, sleeps, timeout_s=0.2, backoff_s=(0.25,))
    try:
        result = await api.hang_up(CALL_SID)
    finally:
        api.close()
    assert result.outcome is HangupOutcome.HUNG_UP and result.attempts == 2
    assert len(standin.requests) == 2 and sleeps.delays == [0.25]


async def test_a_refused_connection_is_retried_then_fails() -> None:
    sleeps = Sleeps()
    api = calls_api(free_port_url(), sleeps, backoff_s=(0.1, 0.2))
    try:
        result = await api.hang_up(CALL_SID)
    finally:
        api.close()
    assert result.outcome is HangupOutcome.FAILED and result.attempts == 3
    assert sleeps.delays == [0.1, 0.2]
    assert "ConnectionError" in (result.error or ""), result.error


async def test_bad_credentials_are_not_retried(standin: TwilioRestStandIn) -> None:
    standin.reply(Reply(401, 20003))
    sleeps = Sleeps()
    api = calls_api(standin.url, sleeps)
    try:
        result = await api.hang_up(CALL_SID)
    finally:
        api.close()
    assert result.outcome is HangupOutcome.FAILED and result.attempts == 1
    assert len(standin.requests) == 1 and sleeps.delays == []
    assert "HTTP 401" in (result.error or "")


async def test_a_malformed_call_sid_is_refused_without_a_request(standin: TwilioRestStandIn) -> None:
    api = calls_api(standin.url, Sleeps())
    try:
        result = await api.hang_up("CA1/../../Accounts")
    finally:
        api.close()
    assert result.outcome is HangupOutcome.FAILED and result.attempts == 0
    assert standin.requests == []


# ---- settings --------------------------------------------------------------------------------------
def test_account_sid_comes_from_either_name_and_is_validated() -> None:
    base = {"TWILIO_AUTH_TOKEN": "t", "PUBLIC_URL": "https://b.example.com"}
    for name in ("TWILIO_ACCOUNT_SID", "VOICE_BRIDGE_TWILIO_ACCOUNT_SID"):
        assert settings_from_env({**base, name: ACCOUNT_SID}).twilio_account_sid == ACCOUNT_SID
    assert settings_from_env(base).twilio_account_sid is None
    assert TwilioCalls.from_settings(settings_from_env(base)) is None
    with pytest.raises(ConfigError, match="twilio_account_sid"):
        settings_from_env({**base, "TWILIO_ACCOUNT_SID": "AC123"})
    with pytest.raises(ConfigError, match="TWILIO_API_SECRET"):
        settings_from_env({**base, "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_API_KEY": "SK1"})
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN or TWILIO_API_KEY"):
        settings_from_env({"VOICE_BRIDGE_INSECURE_DEV": "true", "TWILIO_ACCOUNT_SID": ACCOUNT_SID})
    keyed = settings_from_env({"VOICE_BRIDGE_INSECURE_DEV": "true", "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                               "TWILIO_API_KEY": "SK1", "TWILIO_API_SECRET": "s"})
    assert keyed.twilio_api_key == "SK1" and "s'" not in repr(keyed)
    assert settings_from_env({**base, "VOICE_BRIDGE_END_HANGS_UP": "true"}).end_hangs_up


@pytest.mark.parametrize(("handoff", "hangs_up"), [
    ('{"hangup": true}', True), ('{"hangup": "true", "reason": "done"}', True),
    ('{"hangup": false}', False), ('{"reason": "transfer"}', False), ("hangup", False),
    ("", False), ("[true]", False), ('{"hangup": 1}', False),
])
def test_which_handoff_data_asks_for_a_hang_up(handoff: str, hangs_up: bool) -> None:
    assert asks_for_hangup(handoff) is hangs_up


async def test_the_demo_agent_hangs_up_after_its_goodbye() -> None:
    for say_goodbye in (lambda a, c: a.on_dtmf(c, "#"), lambda a, c: a.on_caller_speech(c, "Bye now", True)):
        call = FakeCall()
        await say_goodbye(DemoAgent(), call)
        assert call.ended and call.hangup


# ---- end to end: the real bridge, the Twilio emulator, the REST stand-in -------------------------------
def summaries(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [json.loads(r.getMessage()[len("call "):]) for r in caplog.records
            if r.name == "voice_bridge.call" and r.getMessage().startswith("call {")]


def end_mark_echoes(call: TwilioEmulator) -> list[float]:
    return [at for at, name in call.mark_echoes if name.endswith("-end")]


async def demo_goodbye(rb: RunningBridge, client: httpx.AsyncClient, sid: str) -> TwilioEmulator:
    call = await open_call(rb, client, sid, "?greeting=")
    await call.send_dtmf("#")  # the demo says goodbye, then hangs up
    assert await call.wait_closed(15)
    return call


@pytest.mark.slow
@pytest.mark.parametrize(("reply", "outcome"), [(OK, "hung_up"), (ALREADY_ENDED, "already_ended")])
async def test_demo_goodbye_is_heard_then_the_call_is_hung_up_then_the_stream_closes(
        standin: TwilioRestStandIn, reply: Reply, outcome: str,
        caplog: pytest.LogCaptureFixture) -> None:
    standin.reply(reply)
    seen: list[tuple[int | None, list[float]]] = []
    caplog.set_level(logging.INFO, logger="voice_bridge.call")
    async with running_bridge(twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=standin.url) as rb, \
            httpx.AsyncClient() as client:
        sid = call_sid(1)
        call = await open_call(rb, client, sid, "?greeting=")
        # the world as the REST request arrives
        standin.on_request = lambda _: seen.append((call.stats.close_code, end_mark_echoes(call)))
        await call.send_dtmf("#")
        assert await call.wait_closed(15)
    [request] = standin.requests
    assert request.call_sid == sid and request.form == {"Status": "completed"}
    [(close_code_then, echoes_then)] = seen
    assert echoes_then, "the REST request came before the goodbye's end mark was echoed"
    assert max(echoes_then) < request.received_at
    assert close_code_then is None, "the stream closed before the call was hung up"
    assert call.stats.close_code == 1000
    [goodbye] = call.played_utterances()
    assert goodbye.frames > 25 and goodbye.underruns == 0
    [summary] = [s for s in summaries(caplog) if s["call_sid"] == sid]
    assert summary["hangup"] == outcome


class GoodbyeThenHangUp(Agent):
    """An in-process agent that queues its goodbye and asks for the hang-up at once, without
    waiting for the goodbye to play: ``end`` itself must let it be heard first."""

    results: ClassVar[list[EndResult]] = []

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        goodbye = asyncio.ensure_future(call.say("Thanks for calling, and goodbye."))
        await asyncio.sleep(0)  # the say's first step queues the speech
        GoodbyeThenHangUp.results.append(await call.end("done", hangup=True))
        await goodbye


@pytest.mark.slow
async def test_end_with_hangup_lets_queued_speech_be_heard_before_the_rest_request(
        standin: TwilioRestStandIn) -> None:
    seen: list[list[float]] = []
    GoodbyeThenHangUp.results.clear()
    async with running_bridge(twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=standin.url,
                              default_agent="python:tests.test_twilio_rest:GoodbyeThenHangUp") as rb, \
            httpx.AsyncClient() as client:
        call = await open_call(rb, client, call_sid(8), "?greeting=")
        standin.on_request = lambda _: seen.append(end_mark_echoes(call))
        await call.send_dtmf("1")
        assert await call.wait_closed(15)
    [request] = standin.requests
    assert seen[0] and max(seen[0]) < request.received_at, "hung up before the goodbye was heard"
    assert len(call.played_utterances()) == 1 and call.stats.close_code == 1000
    assert GoodbyeThenHangUp.results == [EndResult(hung_up=True)]


@pytest.mark.slow
async def test_a_failing_api_still_closes_the_stream(standin: TwilioRestStandIn,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    standin.reply(default=SERVER_ERROR)
    caplog.set_level(logging.INFO, logger="voice_bridge.call")
    sleeps = Sleeps()
    async with running_bridge(twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=standin.url) as rb, \
            httpx.AsyncClient() as client:
        rb.bridge.twilio.close()
        rb.bridge.twilio = calls_api(standin.url, sleeps)
        call = await demo_goodbye(rb, client, call_sid(2))
        errors = rb.bridge.metrics.errors.labels(kind="hangup_failed")._value.get()
    assert len(standin.requests) == 4 and sleeps.delays == [0.5, 1.0, 2.0]
    assert call.stats.close_code == 1000 and len(call.played_utterances()) == 1
    [summary] = summaries(caplog)
    assert summary["hangup"] == "failed"
    assert errors == 1


@pytest.mark.slow
async def test_without_an_account_sid_a_hang_up_falls_back_to_closing_the_stream(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voice_bridge.call")
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        assert rb.bridge.twilio is None
        call = await demo_goodbye(rb, client, call_sid(3))
    assert call.stats.close_code == 1000 and len(call.played_utterances()) == 1
    [summary] = summaries(caplog)
    assert summary["hangup"] == "unavailable"
    assert any("needs TWILIO_ACCOUNT_SID" in r.getMessage() for r in caplog.records)


async def relay_end(rb: RunningBridge, client: httpx.AsyncClient, sid: str, **end: object):  # type: ignore[no-untyped-def]
    """A ConversationRelay agent says goodbye and sends ``end``; returns (call, agent)."""
    async with agent_app() as agent:
        call = await open_call(rb, client, sid, f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        await agent.send(type="text", token="Goodbye and thanks for calling.", last=True)
        await agent.send(type="end", **end)
        assert await call.wait_closed(15)
        assert len(call.played_utterances()) == 1, "the goodbye must be heard"
        await eventually(lambda: agent.socket is not None and agent.socket.close_code is not None, 5)
        return call, agent


@pytest.mark.slow
async def test_conversation_relay_end_hangs_up_only_when_handoff_data_asks(
        standin: TwilioRestStandIn) -> None:
    async with running_bridge(twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=standin.url) as rb, \
            httpx.AsyncClient() as client:
        call, agent = await relay_end(rb, client, call_sid(4), handoffData='{"reason": "transfer"}')
        assert standin.requests == [], "a plain end continues with the next TwiML verb"
        assert call.stats.close_code == 1000 and agent.of_type("error") == []
        call, agent = await relay_end(rb, client, call_sid(5),
                                      handoffData='{"hangup": true, "reason": "done"}')
        [request] = standin.requests
        assert request.call_sid == call_sid(5)
        assert max(end_mark_echoes(call)) < request.received_at
        assert call.stats.close_code == 1000 and agent.of_type("error") == []


@pytest.mark.slow
async def test_end_hangs_up_setting_makes_every_relay_end_hang_up(standin: TwilioRestStandIn) -> None:
    async with running_bridge(twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=standin.url,
                              end_hangs_up=True) as rb, httpx.AsyncClient() as client:
        await relay_end(rb, client, call_sid(6))
    assert [r.call_sid for r in standin.requests] == [call_sid(6)]


@pytest.mark.slow
async def test_a_relay_hang_up_without_credentials_tells_the_agent_why() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        call, agent = await relay_end(rb, client, call_sid(7), handoffData={"hangup": True})
    assert call.stats.close_code == 1000
    [error] = agent.of_type("error")
    assert "not hung up" in error["description"] and "TWILIO_ACCOUNT_SID" in error["description"]
