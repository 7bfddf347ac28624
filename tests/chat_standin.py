"""A STAND-IN for an OpenAI-compatible chat completion server (no LLM can run in the tests).

A tiny HTTP/1.1 server on 127.0.0.1 (plain asyncio, so the test controls every byte and every
pause) that answers ``POST /v1/chat/completions`` with scripted replies: tokens streamed as
server-sent events in OpenAI's chunk format (``data: {"choices":[{"delta":{"content":…}}]}`` …
``data: [DONE]``), with controllable delays, stalls, HTTP errors with JSON bodies and malformed
events. It records every request (headers and JSON body) and notices when the client closes the
connection before the reply is complete, which is how the tests see a cancelled request reach the
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Script:
    """How the stand-in answers one request."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", " there", "."])
    first_delay_s: float = 0.0
    """Before the response headers (a model loading, or a queue at the server)."""
    first_token_delay_s: float = 0.0
    """After the headers, before the first token (the model reading the prompt)."""
    token_delay_s: float = 0.0
    """Between tokens."""
    stall_after: int | None = None
    """Send this many tokens, then nothing more (connection held open until the client leaves)."""
    status: int = 200
    error_body: Any = None
    """For status >= 400: a JSON-able body (or a str sent as text/plain)."""
    raw_events: list[str] | None = None
    """Send these ``data:`` payloads verbatim instead of well-formed chunks (malformed streams)."""
    done: bool = True
    """Finish with a ``finish_reason`` chunk and ``data: [DONE]``."""


@dataclass
class ChatRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.monotonic)
    tokens_sent: int = 0
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)
    """The client closed the connection before the reply was complete."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """The stand-in is done with this request (completed, failed or abandoned)."""

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.body["messages"]


class StandInChatServer:
    """``async with StandInChatServer() as llm:`` … ``llm.url`` is the API base (``…/v1``)."""

    def __init__(self) -> None:
        self.scripts: deque[Script] = deque()
        self.default = Script()
        self.requests: list[ChatRequest] = []
        self._request_seen = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *scripts: Script) -> None:
        """Answer the next requests with these, in order (then with ``default``)."""
        self.scripts.extend(scripts)

    async def wait_requests(self, count: int, timeout: float = 5.0) -> ChatRequest:
        """Wait until ``count`` requests arrived; returns the last of them."""
        async with asyncio.timeout(timeout), self._request_seen:
            await self._request_seen.wait_for(lambda: len(self.requests) >= count)
        return self.requests[count - 1]

    async def __aenter__(self) -> StandInChatServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    # ---- one connection ------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._one_request(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else None
        request = ChatRequest(method, path, headers, body)
        async with self._request_seen:
            self.requests.append(request)
            self._request_seen.notify_all()
        script = self.scripts.popleft() if self.scripts else self.default
        # The client sends nothing more: a read returning means it closed the connection.
        watcher = asyncio.create_task(self._watch_close(reader, request))
        try:
            await self._answer(request, script, writer)
        finally:
            request.finished.set()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    @staticmethod
    async def _watch_close(reader: asyncio.StreamReader, request: ChatRequest) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read(1)
        if not request.finished.is_set():
            request.client_closed.set()

    async def _answer(self, request: ChatRequest, script: Script, writer: asyncio.StreamWriter) -> None:
        if await _pause(request, script.first_delay_s):
            return
        if request.method != "POST" or request.path != "/v1/chat/completions":
            await _send_whole(writer, 404, {"error": {"message": f"no route {request.path}"}})
            return
        if script.status >= 400:
            await _send_whole(writer, script.status, script.error_body)
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n")
        await writer.drain()
        model = (request.body or {}).get("model") or "stand-in"
        if script.raw_events is not None:
            for payload in script.raw_events:
                await _send_chunk(writer, f"data: {payload}\n\n")
        else:
            await _send_chunk(writer, f"data: {_chunk(model, {'role': 'assistant', 'content': ''})}\n\n")
            for index, token in enumerate(script.tokens):
                if script.stall_after is not None and index >= script.stall_after:
                    await request.client_closed.wait()  # hold the connection, send nothing
                    return
                delay = script.first_token_delay_s if index == 0 else script.token_delay_s
                if await _pause(request, delay):
                    return
                await _send_chunk(writer, f"data: {_chunk(model, {'content': token})}\n\n")
                request.tokens_sent += 1
            if script.done:
                await _send_chunk(writer, f"data: {_chunk(model, {}, finish='stop')}\n\n")
                await _send_chunk(writer, "data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _pause(request: ChatRequest, seconds: float) -> bool:
    """Sleep, but return True at once if the client goes away meanwhile."""
    if seconds <= 0:
        return request.client_closed.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(request.client_closed.wait(), seconds)
    return request.client_closed.is_set()


def _chunk(model: str, delta: dict[str, str], finish: str | None = None) -> str:
    return json.dumps({
        "id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })


async def _send_chunk(writer: asyncio.StreamWriter, text: str) -> None:
    data = text.encode()
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _send_whole(writer: asyncio.StreamWriter, status: int, body: Any) -> None:
    if isinstance(body, str):
        data, kind = body.encode(), "text/plain"
    else:
        data, kind = json.dumps(body).encode(), "application/json"
    writer.write(f"HTTP/1.1 {status} Error\r\ncontent-type: {kind}\r\ncontent-length: {len(data)}\r\n"
                 f"connection: close\r\n\r\n".encode() + data)
    await writer.drain()
