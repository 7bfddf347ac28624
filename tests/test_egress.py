"""Issue 10, finding 3 (agent URLs) and 7 (play redirects): where a call may make the bridge connect.

Loopback, private, link-local, multicast, unspecified and metadata addresses are refused unless
allow-listed; every address of a name is checked and the connection goes to a checked address;
redirects are followed by hand, each hop checked; errors told to the agent name nothing inside.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from telephony.agents.audio_fetch import MAX_REDIRECTS, AudioFetchError, fetch_audio
from telephony.agents.base import AgentError
from telephony.agents.relay_client import RelayAgent
from telephony.config import ConfigError, settings_from_env
from telephony.egress import EgressPolicy, EgressRefused, address_category, guarded_client
from telephony.testing.asgi_server import free_port_url, serve_asgi
from telephony.testing.bridge_harness import running_bridge
from tests.conftest import wav_bytes
from tests.test_relay_client import FakeCall

LOOPBACK_HOST = EgressPolicy(allow_hosts=frozenset({"127.0.0.1"}))
"""The test servers' own address is trusted by name; ``localhost`` (the same machine, reached by
another name) is not, so it stands for "an internal address an agent should not reach"."""
WAV = wav_bytes(np.zeros(800, dtype=np.float32), 8000)


# ---- the address rule --------------------------------------------------------------------------------
@pytest.mark.parametrize(("address", "category"), [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.5", "private"), ("172.16.3.4", "private"), ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"), ("100.64.0.1", "private"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
    ("169.254.10.10", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.1.2.3", "private"),
    ("2002:7f00:1::", "tunnel"), ("240.0.0.1", "reserved"),
    ("8.8.8.8", None), ("2606:4700:4700::1111", None), ("93.184.216.34", None),
])
def test_address_categories(address: str, category: str | None) -> None:
    assert address_category(ipaddress.ip_address(address)) == category


def test_allow_lists_name_what_may_be_reached() -> None:
    policy = EgressPolicy(allow_nets=(ipaddress.ip_network("10.0.0.0/8"),))
    assert policy.address_allowed(ipaddress.ip_address("10.9.9.9"))
    assert policy.address_allowed(ipaddress.ip_address("::ffff:10.9.9.9"))
    assert not policy.address_allowed(ipaddress.ip_address("192.168.0.1"))
    assert not policy.address_allowed(ipaddress.ip_address("169.254.169.254"))
    assert EgressPolicy(allow_hosts=frozenset({"agents.internal"})).host_trusted("Agents.Internal.")


async def test_names_are_resolved_and_every_address_checked() -> None:
    strict = EgressPolicy()
    with pytest.raises(EgressRefused):
        await strict.resolve("localhost", 80)
    with pytest.raises(EgressRefused):
        await strict.resolve("169.254.169.254", 80)
    with pytest.raises(EgressRefused):
        await strict.resolve("[::1]", 80)
    with pytest.raises(EgressRefused):
        await strict.resolve("no-such-host.invalid", 80)
    assert await strict.resolve("8.8.8.8", 53) == ["8.8.8.8"]
    allowed = EgressPolicy(allow_nets=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1")))
    assert "127.0.0.1" in await allowed.resolve("localhost", 80)


def test_settings_parse_allow_lists_and_refuse_bad_ones() -> None:
    settings = settings_from_env({"VOICE_BRIDGE_AGENT_ALLOW_NETS": "10.0.0.0/8, ::1",
                                  "VOICE_BRIDGE_AGENT_ALLOW_HOSTS": "agents.internal"}, insecure_dev=True)
    policy = EgressPolicy.from_settings(settings)
    assert policy.allow_hosts == {"agents.internal"}
    assert ipaddress.ip_network("10.0.0.0/8") in policy.allow_nets
    with pytest.raises(ConfigError, match="agent_allow_nets"):
        settings_from_env({"VOICE_BRIDGE_AGENT_ALLOW_NETS": "10.0.0.0/33"}, insecure_dev=True)


# ---- agent URLs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["ws://", "wss://", "ws://:8080/relay", "ws:///relay"])
def test_a_default_agent_without_a_host_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="default_agent"):
        settings_from_env({"VOICE_BRIDGE_DEFAULT_AGENT": url}, insecure_dev=True)


@pytest.mark.slow
@pytest.mark.parametrize("url", ["ws://", "wss://", "ws://:8080/relay"])
async def test_a_webhook_agent_url_without_a_host_is_a_422(url: str) -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        signed = await rb.webhook(client, "CA51", f"?agentUrl={url}")
        assert signed.status_code == 422 and signed.json()["error"]["code"] == "invalid_agent"


@pytest.fixture
async def internal_agent() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An agent server reachable only as an internal address: ``ws://localhost:N``."""
    dialled = asyncio.Event()

    async def handler(ws: websockets.ServerConnection) -> None:
        dialled.set()
        async for _ in ws:
            pass

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        yield f"ws://localhost:{server.sockets[0].getsockname()[1]}/relay", dialled


async def test_an_agent_url_on_an_internal_address_is_refused_and_never_dialled(internal_agent) -> None:  # type: ignore[no-untyped-def]
    url, dialled = internal_agent
    agent = RelayAgent(url, auth_token=None, http_client=httpx.AsyncClient(), egress=LOOPBACK_HOST)
    with pytest.raises(AgentError) as caught:
        await agent.on_start(FakeCall())
    assert str(caught.value) == "agent URL refused: address not allowed"
    assert not dialled.is_set()
    for meta in ("ws://169.254.169.254/latest", "ws://[fd00:ec2::254]/", "ws://0.0.0.0:1/"):
        with pytest.raises(AgentError, match="refused"):
            await RelayAgent(meta, auth_token=None, http_client=httpx.AsyncClient()).on_start(FakeCall())


@pytest.mark.slow
async def test_through_the_bridge_an_internal_agent_url_ends_the_call_undialled(internal_agent) -> None:  # type: ignore[no-untyped-def]
    from tests.test_call_e2e import open_call

    url, dialled = internal_agent
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA52", f"?greeting=&agentUrl={url}")
        assert await call.wait_closed(5)
        assert call.stats.close_code == 1011
    assert not dialled.is_set()


async def test_an_allow_listed_internal_agent_is_dialled(internal_agent) -> None:  # type: ignore[no-untyped-def]
    url, dialled = internal_agent
    policy = EgressPolicy(allow_nets=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1")))
    agent = RelayAgent(url, auth_token=None, http_client=httpx.AsyncClient(), egress=policy)
    call = FakeCall()
    await agent.on_start(call)
    assert dialled.is_set()
    await agent.on_stop(call)


# ---- play downloads ------------------------------------------------------------------------------------
@pytest.fixture
async def media_server() -> AsyncIterator[tuple[str, list[str]]]:
    hits: list[str] = []
    base: list[str] = []

    async def clip(request: Request) -> Response:
        hits.append(request.url.path)
        return Response(WAV, media_type="audio/wav")

    async def redirect(request: Request) -> Response:
        hits.append(request.url.path)
        target = request.query_params["to"].replace("PORT", str(request.url.port))
        return RedirectResponse(target, status_code=302)

    async def loop(request: Request) -> Response:
        hits.append(request.url.path)
        return RedirectResponse("/loop", status_code=307)

    app = Starlette(routes=[Route("/clip.wav", clip), Route("/secret.wav", clip),
                            Route("/redirect", redirect), Route("/loop", loop)])
    async with serve_asgi(app) as url:
        base.append(url)
        yield url, hits


@pytest.mark.slow
async def test_a_redirect_to_loopback_is_refused_without_a_request(media_server) -> None:  # type: ignore[no-untyped-def]
    base, hits = media_server
    async with guarded_client(LOOPBACK_HOST) as client:
        audio, rate = await fetch_audio(client, f"{base}/clip.wav", max_bytes=1_000_000)
        assert rate == 8000 and audio.size == 800
        for target in ("http://localhost:PORT/secret.wav", "http://169.254.169.254/latest/meta-data/",
                       "http://[::1]:PORT/secret.wav", "http://10.0.0.5:8080/secret.wav"):
            with pytest.raises(AudioFetchError) as caught:
                await fetch_audio(client, f"{base}/redirect?to={target}", max_bytes=1_000_000)
            message = str(caught.value)
            assert message == "play source refused: address not allowed", message
    assert "/secret.wav" not in hits


@pytest.mark.slow
async def test_redirects_are_bounded(media_server) -> None:  # type: ignore[no-untyped-def]
    base, hits = media_server
    async with guarded_client(LOOPBACK_HOST) as client:
        with pytest.raises(AudioFetchError, match="download failed: more than 3 redirects"):
            await fetch_audio(client, f"{base}/loop", max_bytes=1_000_000)
    assert hits.count("/loop") == MAX_REDIRECTS + 1


async def test_an_internal_play_source_is_refused_and_errors_name_nothing_inside() -> None:
    async with guarded_client(LOOPBACK_HOST) as client:
        with pytest.raises(AudioFetchError) as refused:
            await fetch_audio(client, "http://localhost:9/x.wav", max_bytes=1000)
        closed = free_port_url()  # allowed (127.0.0.1) but nothing listens
        with pytest.raises(AudioFetchError) as failed:
            await fetch_audio(client, f"{closed}/x.wav", max_bytes=1000)
    assert str(refused.value) == "play source refused: address not allowed"
    assert str(failed.value) == "download failed: cannot connect"
    for text in (str(refused.value), str(failed.value)):
        assert "127.0.0.1" not in text and "Errno" not in text and closed.rsplit(":", 1)[1] not in text


@pytest.mark.slow
@pytest.mark.parametrize("url", ["ws://10.0.0.5:8080/relay", "ws://[::1]:9000/", "wss://169.254.169.254/x",
                                 "ws://192.168.1.20/agent"])
async def test_a_webhook_agent_url_on_a_refused_address_literal_is_a_422(url: str) -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA53", f"?agentUrl={url}")
        assert response.status_code == 422 and response.json()["error"]["code"] == "agent_refused"
        assert rb.bridge.calls == {}


def test_the_configured_default_agent_host_is_trusted() -> None:
    settings = settings_from_env({"VOICE_BRIDGE_DEFAULT_AGENT": "ws://agents.internal:9000/relay"},
                                 insecure_dev=True)
    policy = EgressPolicy.from_settings(settings)
    assert policy.host_trusted("agents.internal")
    plain = EgressPolicy.from_settings(settings_from_env({}, insecure_dev=True))
    assert not plain.host_trusted("agents.internal")
