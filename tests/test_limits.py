"""Findings 1 and 2 of issue 10: bounded connections and no work without a credential.

Raw sockets stand in for hostile clients (a slowloris sends headers a byte at a time, a
"Twilio" sends a 200 MB form); other peers are other loopback addresses (127.0.0.2...), which
Linux routes to the 127.0.0.1 listener, so per-peer caps can be seen from one machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

from telephony.conn_guard import ConnectionGuard, plan_budget, raise_fd_limit
from telephony.testing.bridge_harness import AUTH_TOKEN, OPERATOR_HEADERS, RunningBridge, running_bridge
from tests.conftest import eventually


def guard_of(rb: RunningBridge) -> ConnectionGuard:
    return rb.server.app.state.connection_guard


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(rb: RunningBridge, peer: str = "127.0.0.1") -> Conn:
    port = int(rb.base_url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(peer, 0))


@asynccontextmanager
async def raw(rb: RunningBridge, peer: str = "127.0.0.1") -> AsyncIterator[Conn]:
    reader, writer = await connect(rb, peer)
    try:
        yield reader, writer
    finally:
        writer.close()


async def response_head(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """The status line and headers the server sent (b"" if it closed without answering)."""
    async with asyncio.timeout(timeout):
        try:
            return await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial


# ---- finding 1: header and body deadlines ---------------------------------------------------------
@pytest.mark.slow
async def test_headers_that_never_complete_get_408_and_the_connection_closes() -> None:
    async with running_bridge(header_timeout_s=0.3) as rb, raw(rb) as (reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a slowloris, stopped here
        started = time.monotonic()
        head = await response_head(reader, 3)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert time.monotonic() - started < 2
        assert await asyncio.wait_for(reader.read(), 2) is not None  # then EOF: closed
        assert reader.at_eof()
        assert guard_of(rb).refused["header_timeout"] == 1


@pytest.mark.slow
async def test_a_kept_alive_connection_gets_the_same_header_deadline_for_its_next_request() -> None:
    async with running_bridge(header_timeout_s=0.3) as rb, raw(rb) as (reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await response_head(reader, 3)
        assert head.startswith(b"HTTP/1.1 200")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(b"GET /health HTTP/1.1\r\nHo")  # uvicorn's keep-alive timer stops at this byte
        assert (await response_head(reader, 3)).startswith(b"HTTP/1.1 408")


@pytest.mark.slow
async def test_silent_connections_are_closed_without_a_stray_408() -> None:
    """A connection that never sends a byte is closed (counted); a kept-alive one after its
    pipelined requests is closed silently: a 408 there could be read as the next answer."""
    async with running_bridge(header_timeout_s=0.3) as rb:
        async with raw(rb) as (reader, _):
            assert await asyncio.wait_for(reader.read(), 3) == b""
        async with raw(rb) as (reader, writer):
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            data = await asyncio.wait_for(reader.read(), 3)  # both answers, then EOF
            assert data.count(b"HTTP/1.1 200") == 2 and b"408" not in data
        assert guard_of(rb).refused == {"idle_timeout": 1}


@pytest.mark.slow
async def test_a_trickled_webhook_body_gets_408_within_the_body_timeout() -> None:
    async with running_bridge(body_timeout_s=0.3) as rb, raw(rb) as (reader, writer):
        writer.write(b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 100\r\n\r\nCallSid=CA")
        head = await response_head(reader, 3)
        assert head.startswith(b"HTTP/1.1 408"), head


@pytest.mark.slow
async def test_a_client_gone_mid_body_is_no_500_and_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async with running_bridge() as rb:
        async with raw(rb) as (_, writer):
            writer.write(b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nCallSid=CA")
            await eventually(lambda: len(rb.server.server_state.tasks) == 1)
        await eventually(lambda: not rb.server.server_state.tasks)
    assert "Traceback" not in caplog.text and "unhandled error" not in caplog.text


# ---- finding 1: caps on unauthenticated connections ----------------------------------------------
@pytest.mark.slow
async def test_idle_connections_past_the_per_peer_cap_get_503_and_other_peers_are_served(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "telephony.conn_guard")
    async with running_bridge(max_pending_per_peer=4, header_timeout_s=5) as rb:
        guard = guard_of(rb)
        idle = [await connect(rb) for _ in range(4)]
        await eventually(lambda: guard.pending == 4)
        async with raw(rb) as (reader, _):
            head = await response_head(reader, 3)
        assert head.startswith(b"HTTP/1.1 503"), head
        assert guard.refused["pending_per_peer"] == 1
        assert "pending per peer" in caplog.text  # a log line past the cap
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=transport) as other:
            assert (await other.get(f"{rb.base_url}/health")).status_code == 200
        for _, writer in idle:
            writer.close()
        await eventually(lambda: guard.pending == 0)


@pytest.mark.slow
async def test_at_the_global_cap_the_oldest_idle_connection_makes_room_for_a_new_caller() -> None:
    # Idle connections from many addresses, each under its per-peer cap, fill the global cap:
    # refusing newcomers would lock every caller and webhook out (a spread-out slowloris), so the
    # oldest connection still waiting for headers is closed instead and the newcomer is served.
    async with running_bridge(max_pending=6, max_pending_per_peer=0, header_timeout_s=5) as rb:
        guard = guard_of(rb)
        idle = [await connect(rb, f"127.0.0.{2 + i}") for i in range(6)]
        await eventually(lambda: guard.pending == 6)
        transport = httpx.AsyncHTTPTransport(local_address="127.0.1.1")
        async with httpx.AsyncClient(transport=transport) as caller:
            assert (await caller.get(f"{rb.base_url}/health")).status_code == 200
        assert guard.refused["evicted"] == 1 and guard.refused["pending_global"] == 0
        oldest_reader = idle[0][0]
        async with asyncio.timeout(3):
            assert await oldest_reader.read() == b""  # closed without an answer
        await eventually(lambda: guard.pending == 5)
        for _, writer in idle:
            writer.close()


@pytest.mark.slow
async def test_connections_past_max_connections_get_503_at_accept() -> None:
    async with running_bridge(max_connections=4, body_timeout_s=5) as rb:
        guard = guard_of(rb)
        busy = []
        for i in range(4):  # requests in progress (headers in, body awaited): not "pending"
            conn = await connect(rb, f"127.0.0.{2 + i}")
            conn[1].write(b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
            busy.append(conn)
        await eventually(lambda: len(rb.server.server_state.connections) == 4
                         and guard.pending == 0)
        async with raw(rb, "127.0.1.1") as (reader, _):
            head = await response_head(reader, 3)
        assert head.startswith(b"HTTP/1.1 503"), head
        assert guard.refused["connections"] == 1
        for _, writer in busy:
            writer.close()


@pytest.mark.slow
async def test_streams_that_do_not_send_start_are_capped_per_peer_with_1013(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "telephony.conn_guard")
    async with running_bridge(max_pending_per_peer=3, start_timeout_s=5) as rb:
        guard = guard_of(rb)
        quiet = [await websockets.connect(rb.stream_url) for _ in range(3)]
        await eventually(lambda: guard.pending == 3)
        async with websockets.connect(rb.stream_url) as refused:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(refused.recv(), 3)
            assert refused.close_code == 1013
        assert guard.refused["pending_per_peer"] == 1
        assert "media stream from 127.0.0.1 refused" in caplog.text
        for ws in quiet:
            await ws.close()
        await eventually(lambda: guard.pending == 0)


@pytest.mark.slow
async def test_streams_that_do_not_send_start_are_capped_globally_with_1013() -> None:
    async with running_bridge(max_pending=2, max_pending_per_peer=0, start_timeout_s=5) as rb:
        guard = guard_of(rb)
        quiet = [await websockets.connect(rb.stream_url) for _ in range(2)]
        await eventually(lambda: guard.streams.total == 2)
        async with websockets.connect(rb.stream_url) as refused:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(refused.recv(), 3)
            assert refused.close_code == 1013
        assert guard.refused["pending_global"] == 1
        for ws in quiet:
            await ws.close()


def test_the_fd_budget_sizes_the_caps_from_the_limit() -> None:
    roomy = plan_budget(fd_limit=8192, raised_from=1024, max_calls=500, max_connections=0,
                        max_pending=256, max_pending_per_peer=32)
    assert roomy.enough and roomy.max_connections == 8192 - 64 - 3 * 500
    assert (roomy.max_pending, roomy.max_pending_per_peer) == (256, 32)
    assert "raised from 1024" in roomy.describe()
    tight = plan_budget(fd_limit=1024, raised_from=1024, max_calls=500, max_connections=0,
                        max_pending=256, max_pending_per_peer=32)
    assert not tight.enough and tight.max_connections == (1024 - 64) // 4
    assert tight.max_pending <= tight.max_connections // 2
    soft, new = raise_fd_limit()
    assert new >= soft


# ---- finding 2: operator endpoints need a credential ------------------------------------------------
@pytest.mark.slow
async def test_a_warmup_flood_without_credentials_is_refused_and_synthesizes_nothing() -> None:
    async with running_bridge() as rb, httpx.AsyncClient(base_url=rb.base_url) as client:
        before = rb.bridge.engine.stats.utterances
        answers = await asyncio.gather(*(client.post("/warmup", json={"voice": "synthetic"})
                                         for _ in range(32)))
        assert [a.status_code for a in answers] == [401] * 32
        assert answers[0].json()["error"]["code"] == "unauthorized"
        assert rb.bridge.engine.stats.utterances == before
        assert not rb.bridge.background


@pytest.mark.slow
async def test_preload_without_credentials_fetches_nothing() -> None:
    fetches = []
    async with running_bridge(voice_server_url="http://127.0.0.1:9") as rb, \
            httpx.AsyncClient(base_url=rb.base_url) as client:
        rb.bridge.voices._fetch_remote = lambda voice_id: fetches.append(voice_id)  # type: ignore[method-assign]
        for i in range(10):
            response = await client.post("/preload", json={"voices": [f"v{i}_{n}" for n in range(64)]})
            assert response.status_code == 401
        assert fetches == []


def signed(url: str, body: bytes | None = None) -> tuple[str, dict[str, str]]:
    """Sign as Twilio does: a JSON body through bodySHA256 in the URL, then the URL alone."""
    if body is not None:
        url = f"{url}?bodySHA256={hashlib.sha256(body).hexdigest()}"
    return url, {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, {}),
                 "Content-Type": "application/json"}


@pytest.mark.slow
async def test_operator_endpoints_take_the_key_or_a_twilio_signature_and_nothing_else() -> None:
    body = json.dumps({"voice": "synthetic"}).encode()
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        warmup = f"{rb.base_url}/warmup"
        assert (await client.post(warmup, content=body, headers=OPERATOR_HEADERS)).status_code == 200
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post(warmup, content=body, headers=wrong)).status_code == 401
        url, headers = signed(warmup, body)
        assert (await client.post(url, content=body, headers=headers)).status_code == 200
        tampered = json.dumps({"voice": "other"}).encode()
        assert (await client.post(url, content=tampered, headers=headers)).status_code == 403
        _, url_only = signed(warmup)  # a signature over the URL does not cover a JSON body
        assert (await client.post(warmup, content=body, headers=url_only)).status_code == 403
        voices = f"{rb.base_url}/voices"
        assert (await client.get(voices)).status_code == 401
        assert (await client.get(voices, headers=signed(voices)[1])).status_code == 200
        assert (await client.get(voices, headers=OPERATOR_HEADERS)).status_code == 200
        for open_path in ("/health", "/metrics"):  # load balancers and Prometheus
            assert (await client.get(rb.base_url + open_path)).status_code == 200


@pytest.mark.slow
async def test_insecure_dev_without_a_key_leaves_operator_endpoints_open() -> None:
    async with running_bridge(twilio_auth_token=None, insecure_dev=True, api_key=None) as rb, \
            httpx.AsyncClient(base_url=rb.base_url) as client:
        assert (await client.post("/warmup")).status_code == 200
        assert (await client.get("/voices")).status_code == 200


# ---- finding 2: bodies are capped before they are read ------------------------------------------------
@pytest.mark.slow
async def test_a_200_mb_webhook_is_refused_at_once_without_reading_it() -> None:
    async with running_bridge() as rb, raw(rb) as (reader, writer):
        writer.write(b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % (200 << 20))
        writer.write(b"CallSid=CA1&" + b"x" * (64 << 10))  # 64 KiB of the 200 MB, no more
        started = time.monotonic()
        head = await response_head(reader, 3)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert time.monotonic() - started < 1


@pytest.mark.slow
async def test_a_chunked_webhook_is_cut_off_past_the_cap() -> None:
    async with running_bridge() as rb, raw(rb) as (reader, writer):
        writer.write(b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 16384
        sent = 0
        answer = asyncio.ensure_future(response_head(reader, 10))
        while not answer.done() and sent < (8 << 20):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            await writer.drain()
            await asyncio.sleep(0)
        head = await answer
        assert head.startswith(b"HTTP/1.1 413"), head
        assert sent < (2 << 20)  # answered after the cap, long before 8 MB
