"""Finding 8 of issue 10: a deploy (SIGTERM) drains instead of cutting every call.

The first test runs the real process (``voice-bridge serve``) and signals it; the others run the
server in-process and start the drain directly, for the deadline and the second-signal paths.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
from twilio.request_validator import RequestValidator

from telephony.testing.bridge_harness import running_bridge
from telephony.testing.bridge_process import bridge_process, free_port
from telephony.testing.twilio_emulator import TwilioEmulator
from tests.conftest import eventually
from tests.test_call_e2e import open_call, twiml_parameters

TOKEN = "drain-test-auth-token-0123456789"
GREETING = "Welcome to the drain test. This greeting keeps playing while the server drains."


async def signed_webhook(client: httpx.AsyncClient, base: str, call_sid: str) -> httpx.Response:
    params = {"CallSid": call_sid, "AccountSid": "AC1", "From": "+15550001111", "To": "+15550002222"}
    url = f"{base}/twiml?greeting={GREETING.replace(' ', '%20')}"
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    return await client.post(url, data=params, headers={"X-Twilio-Signature": signature})


async def stream_of(response: httpx.Response, call_sid: str) -> TwilioEmulator:
    assert response.status_code == 200, response.text
    url, params = twiml_parameters(response.text)
    call = TwilioEmulator(url, call_sid=call_sid, stream_sid="MZ" + call_sid[2:], custom_parameters=params)
    await call.connect()
    return call


async def draining_health(client: httpx.AsyncClient, base: str) -> httpx.Response:
    """/health once the signal has been handled (it is delivered asynchronously): not 200."""
    answers: list[httpx.Response] = []

    async def not_healthy() -> bool:
        answers.append(await client.get(f"{base}/health"))
        return answers[-1].status_code != 200

    await eventually(not_healthy, what="/health answering while draining")
    return answers[-1]


@pytest.mark.slow
async def test_sigterm_drains_a_real_process_live_call_plays_to_its_end_and_it_exits_0() -> None:
    port = free_port()
    env = {"TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_URL": f"http://127.0.0.1:{port}",
           "VOICE_BRIDGE_ENGINE": "synthetic", "VOICE_BRIDGE_LOG_LEVEL": "info"}
    async with bridge_process(env=env, port=port) as proc, httpx.AsyncClient(timeout=5) as client:
        base = proc.base_url
        live = await stream_of(await signed_webhook(client, base, "CA1"), "CA1")
        assert await live.wait_for(lambda: live.stats.media_received > 0, 10)
        answered = await signed_webhook(client, base, "CA2")  # answered before the drain

        proc.process.send_signal(signal.SIGTERM)
        health = await draining_health(client, base)
        assert health.status_code == 503 and health.json()["status"] == "draining"
        refused = await signed_webhook(client, base, "CA3")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"

        late = await stream_of(answered, "CA2")  # its stream comes after SIGTERM: still accepted
        assert await late.wait_for(lambda: late.stats.media_received > 0, 10)

        # The live call's greeting plays to its end; then the caller ends the call as usual.
        assert await live.wait_for(lambda: any(u.outcome == "played" for u in live.stats.utterances), 20)
        assert live.stats.close_code is None and proc.process.poll() is None, proc.log()[-3000:]
        for call in (live, late):
            await call.send_dtmf("#")  # the demo agent says goodbye and ends the call
        for call in (live, late):
            assert await call.wait_closed(15)
            assert call.stats.close_code == 1000, call.stats.close_reason
            assert call.stats.close_reason == "demo: caller pressed pound"
        started = time.monotonic()
        returncode = await asyncio.to_thread(proc.process.wait, 15)
        assert returncode == 0, proc.log()[-3000:]
        assert time.monotonic() - started < 5, proc.log()[-3000:]
        log = proc.log()
        assert "SIGTERM: graceful drain" in log
        assert "draining: 1 live call(s), 1 answered webhook(s) awaiting their stream" in log
        assert "drain: every call ended" in log
        assert "fd budget: limit" in log


@pytest.mark.slow
async def test_a_second_sigterm_stops_at_once() -> None:
    async with bridge_process("--insecure-dev", env={"VOICE_BRIDGE_ENGINE": "synthetic"}) as proc, \
            httpx.AsyncClient(timeout=5) as client:
        response = await client.post(f"{proc.base_url}/twiml?greeting={GREETING}", data={"CallSid": "CA9"})
        call = await stream_of(response, "CA9")
        assert await call.wait_for(lambda: call.stats.media_received > 0, 10)
        proc.process.send_signal(signal.SIGTERM)
        assert (await draining_health(client, proc.base_url)).status_code == 503
        started = time.monotonic()
        proc.process.send_signal(signal.SIGTERM)
        assert await call.wait_closed(5)
        assert await asyncio.to_thread(proc.process.wait, 10) == 0
        assert time.monotonic() - started < 5
        assert "SIGTERM: stopping now; 1 live call(s) are cut" in proc.log()


@pytest.mark.slow
async def test_past_drain_s_the_utterance_in_progress_finishes_then_the_call_closes() -> None:
    long_greeting = "This greeting is much longer than the drain allows. " * 3
    async with running_bridge(drain_s=0.3) as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA7", f"?greeting={long_greeting.replace(' ', '%20')}")
        assert await call.wait_for(lambda: call.stats.media_received > 0)
        session = next(iter(rb.bridge.calls.values()))
        queued = asyncio.ensure_future(session.say("Queued behind the greeting; never heard."))
        rb.server.begin_drain()
        assert await call.wait_closed(20)
        assert call.stats.close_code == 1000 and call.stats.close_reason == "server restarting"
        played = [u for u in call.stats.utterances if u.outcome == "played"]
        assert len(played) == 1  # the greeting, to its end: the caller heard every frame
        assert (await queued).outcome.value == "cancelled"
        assert await asyncio.wait_for(rb.server.drain_task, 5) is None
        assert rb.server.should_exit


@pytest.mark.slow
async def test_drain_without_calls_ends_at_once_and_health_says_draining() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        rb.server.begin_drain()
        health = await client.get(f"{rb.base_url}/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        await asyncio.wait_for(rb.server.drain_task, 5)
        assert rb.server.should_exit

