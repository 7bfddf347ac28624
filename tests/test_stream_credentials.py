"""Issue 10, finding 3: who may open a media stream, and with which parameters.

The handshake signature covers only the fixed stream URL (the same for every call), so it proves
nothing about a call; the webhook's token covers the CallSid and every parameter, verifies in any
process holding the auth token, and is single use per process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

from telephony.testing.bridge_harness import AUTH_TOKEN, running_bridge
from telephony.testing.bridge_process import BridgeProcess, bridge_process, free_port
from telephony.testing.twilio_emulator import TwilioEmulator
from tests.test_call_e2e import open_call, twiml_parameters

pytestmark = pytest.mark.slow  # end-to-end: runs outside the fast tier (pytest -m 'not slow')

WEBHOOK_FORM = {"AccountSid": "AC1", "From": "+15550001111", "To": "+15550002222",
                "Direction": "inbound"}


async def test_a_valid_handshake_signature_without_a_token_is_refused() -> None:
    """Replaying the (per-URL, not per-call) handshake signature with fresh CallSids and no
    token set up 20 of 20 calls before."""
    async with running_bridge() as rb:
        signature = rb.sign(rb.stream_url)
        for n in range(3):
            call = TwilioEmulator(rb.stream_url, call_sid=f"CAreplay{n}", stream_sid=f"MZreplay{n}",
                                  custom_parameters={"agentUrl": "demo"},
                                  headers={"X-Twilio-Signature": signature})
            await call.connect()
            assert await call.wait_closed(5)
            assert call.stats.close_code == 1008, f"replay {n} was accepted"
            assert call.stats.media_received == 0
        assert rb.bridge.calls == {}


async def test_a_changed_agent_url_in_start_is_refused_and_never_dialled() -> None:
    """A valid token with another agentUrl made the bridge connect to it and sign the handshake."""
    dialled = asyncio.Event()

    async def evil(ws: websockets.ServerConnection) -> None:
        dialled.set()
        await ws.close()

    async with websockets.serve(evil, "127.0.0.1", 0) as server, running_bridge() as rb, \
            httpx.AsyncClient() as client:
        evil_url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/steal"
        response = await rb.webhook(client, "CA31", "?greeting=")
        url, params = twiml_parameters(response.text)
        assert params["agentUrl"] == "demo"
        for signed in (False, True):
            forged = TwilioEmulator(url, call_sid="CA31", stream_sid=f"MZ31{signed}",
                                    custom_parameters={**params, "agentUrl": evil_url},
                                    headers={"X-Twilio-Signature": rb.sign(url)} if signed else {})
            await forged.connect()
            assert await forged.wait_closed(5)
            assert forged.stats.close_code == 1008
        assert not dialled.is_set() and rb.bridge.calls == {}
        # the forged attempts did not burn the real call's token
        real = TwilioEmulator(url, call_sid="CA31", stream_sid="MZ31", custom_parameters=params)
        await real.connect()
        assert await real.wait_for(lambda: len(rb.bridge.calls) == 1, timeout=5)
        await real.hang_up()


@pytest.mark.parametrize("name", ["voice", "preset", "greeting", "agentUrl", "from", "to", "direction",
                                  "partialPrompts", "-greeting"])
async def test_every_parameter_is_covered(name: str) -> None:
    """Each call gets its own token; changing (adding, removing) any one parameter voids it."""
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA32", "?greeting=Hi.")
        url, params = twiml_parameters(response.text)
        assert set(params) == {"voice", "preset", "greeting", "agentUrl", "partialPrompts", "from", "to",
                               "direction", "token"}
        changed = dict(params)
        if name.startswith("-"):
            del changed[name[1:]]
        else:
            changed[name] = params.get(name, "true") + ("x" if name in params else "")
        if name == "preset":
            changed[name] = "fast" if params[name] != "fast" else "balanced"
        call = TwilioEmulator(url, call_sid="CA32", stream_sid="MZ32", custom_parameters=changed)
        await call.connect()
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1008
        assert call.stats.close_reason == "invalid or expired stream token"


async def test_a_call_already_live_is_refused_even_with_another_valid_token() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        first = await open_call(rb, client, "CA33", "?greeting=")
        assert await first.wait_for(lambda: len(rb.bridge.calls) == 1, timeout=5)
        # the webhook fired again for the same call: a fresh, valid token, a second stream
        response = await rb.webhook(client, "CA33", "?greeting=")
        url, params = twiml_parameters(response.text)
        second = TwilioEmulator(url, call_sid="CA33", stream_sid="MZ33b", custom_parameters=params)
        await second.connect()
        assert await second.wait_closed(5)
        assert second.stats.close_code == 1008 and "already live" in second.stats.close_reason
        assert len(rb.bridge.calls) == 1
        await first.hang_up()


# ---- two processes, sharing only the auth token -------------------------------------------------
@contextlib.asynccontextmanager
async def two_bridges() -> AsyncIterator[tuple[BridgeProcess, BridgeProcess, str]]:
    """Two real bridge processes, one auth token, nothing else shared: both believe they are the
    same public URL (as behind one load balancer), which is what Twilio signs against."""
    public_port = free_port()  # the "load balancer" address both are configured with
    public_url = f"http://127.0.0.1:{public_port}"
    env = {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": public_url}
    args = ("--engine", "synthetic", "--log-level", "warning")
    async with bridge_process(*args, env=env) as a, bridge_process(*args, env=env) as b:
        yield a, b, public_url


def signed_webhook(public_url: str, call_sid: str,
                   query: str = "") -> tuple[str, dict[str, str], dict[str, str]]:
    params = {"CallSid": call_sid, **WEBHOOK_FORM}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(f"{public_url}/twiml{query}", params)
    return f"/twiml{query}", params, {"X-Twilio-Signature": signature}


async def test_two_processes_share_only_the_auth_token() -> None:
    """Must-show: the webhook answered by one process, the stream opened on the other, accepted;
    a parameter changed in ``start`` refused; the token is single use on the process that took it."""
    async with two_bridges() as (a, b, public_url), httpx.AsyncClient(timeout=10) as client:
        path, form, headers = signed_webhook(public_url, "CA41", "?greeting=Hello%20from%20A.")
        answer = await client.post(a.base_url + path, data=form, headers=headers)
        assert answer.status_code == 200, answer.text
        _, params = twiml_parameters(answer.text)
        stream_on_b = f"ws://127.0.0.1:{b.port}/media-stream"

        changed = TwilioEmulator(stream_on_b, call_sid="CA41", stream_sid="MZ41x",
                                 custom_parameters={**params, "voice": params["voice"] + "x"})
        await changed.connect()
        assert await changed.wait_closed(10)
        assert changed.stats.close_code == 1008 and changed.stats.media_received == 0

        call = TwilioEmulator(stream_on_b, call_sid="CA41", stream_sid="MZ41", custom_parameters=params)
        await call.connect()
        assert await call.wait_for(lambda: call.played_utterances(), timeout=20), b.log()[-2000:]
        assert call.stats.invalid == []
        await call.hang_up()

        replay = TwilioEmulator(stream_on_b, call_sid="CA41", stream_sid="MZ41r", custom_parameters=params)
        await replay.connect()
        assert await replay.wait_closed(10)
        assert replay.stats.close_code == 1008, "a used token must not open a second stream there"
