"""Streaming chat completions from an OpenAI-compatible server (vLLM, llama.cpp, Ollama, OpenAI).

``stream_chat`` POSTs ``{base}/chat/completions`` with ``stream: true`` and yields the reply's text
as it arrives (``choices[0].delta.content`` of each ``data:`` event, until ``data: [DONE]``).

Every way a chat server can fail a phone call becomes one ``ChatError`` with a short reason that is
safe to log (it never contains the API key): refused connection, an HTTP error with any of the
error-body shapes servers use, a malformed event, an error event mid-stream, no first token in
time, a stall between tokens. Timeouts are enforced around each read only, never across a
``yield``: time the consumer spends speaking must not count against the server, and a timeout
scope spanning a ``yield`` would cancel whatever the consumer happens to be awaiting.

Closing the generator (or cancelling the task iterating it) closes the HTTP response, so the
connection drops and the server stops generating.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from tts_core.errors import UpstreamFailed

T = TypeVar("T")

MAX_ERROR_BODY = 64 * 1024
"""Bytes of an error response read to find its message (the rest is not worth waiting for)."""
MAX_EVENT_CHARS = 256 * 1024
"""One SSE event larger than this is not a chat delta: the stream is treated as malformed."""


class ChatError(UpstreamFailed):
    """The chat server did not deliver a reply; ``failure`` is a short metric label (connect, http,
    malformed, server, first_token_timeout, stall, truncated). It is not ``kind``: that name is the
    error tree's category (``upstream_failed``), the same for every way the server can fail."""

    def __init__(self, failure: str, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure


@dataclass(frozen=True)
class ChatServer:
    """Where and how to ask for completions (from the VOICE_BRIDGE_LLM_* settings)."""

    base_url: str
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_tokens: int = 0
    """0: not sent (the server's default applies)."""
    first_token_timeout_s: float = 8.0
    stall_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0

    @property
    def completions_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"

    @property
    def display_url(self) -> str:
        """The completions URL for logs: without any user:password@ an operator put in it."""
        parts = urlsplit(self.completions_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": messages, "stream": True}
        if self.model:
            body["model"] = self.model
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        return body

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


async def stream_chat(http: httpx.AsyncClient, server: ChatServer,
                      messages: list[dict[str, str]]) -> AsyncGenerator[str, None]:
    """Yield the reply's text pieces as the server streams them; raise ``ChatError`` on failure."""
    loop = asyncio.get_running_loop()
    first_deadline = loop.time() + server.first_token_timeout_s
    # httpx's own read timeout only backs up ours (which fire first and name the failure).
    timeout = httpx.Timeout(max(server.first_token_timeout_s, server.stall_timeout_s) + 1.0,
                            connect=min(server.connect_timeout_s, server.first_token_timeout_s))
    request = http.build_request("POST", server.completions_url, json=server.request_body(messages),
                                 headers=server.headers(), timeout=timeout)
    try:
        response = await _before(first_deadline, http.send(request, stream=True))
    except TimeoutError:
        raise ChatError("first_token_timeout",
                        f"no answer within {server.first_token_timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise ChatError("connect", f"cannot reach the chat server: {_describe(exc)}") from None
    try:
        if response.status_code >= 400:
            raise ChatError("http", f"HTTP {response.status_code}: {await _error_message(response)}")
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            # A server (or proxy) that ignored stream:true answers one JSON completion.
            text = await _before(first_deadline, _whole_completion(response))
            if text:
                yield text
            return
        events = _sse_data(response.aiter_lines())
        last_token_at: float | None = None
        finished = False
        while True:
            if last_token_at is None:
                deadline, failure = first_deadline, "first_token_timeout"
            else:
                deadline, failure = last_token_at + server.stall_timeout_s, "stall"
            try:
                data = await _before(deadline, anext(events, None))
            except TimeoutError:
                if failure == "stall":
                    raise ChatError("stall", f"no token for {server.stall_timeout_s:g} s") from None
                raise ChatError("first_token_timeout",
                                f"no first token within {server.first_token_timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise ChatError("truncated", f"the stream broke: {_describe(exc)}") from None
            if data is None:
                if not finished:
                    raise ChatError("truncated", "the stream ended before [DONE]")
                return
            if data.strip() == "[DONE]":
                return
            token, done = _delta(data)
            finished = finished or done
            if token:
                yield token
                last_token_at = loop.time()  # after the consumer took it: its pace is not a stall
    finally:
        await response.aclose()


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


async def without_reasoning(tokens: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """Drop a leading ``<think>…</think>`` block: reasoning models (Qwen3, DeepSeek-R1 distills)
    served without a reasoning parser write their chain of thought into ``content``, and a caller
    must not hear it. Anything else passes through unchanged, token by token; only the first few
    characters wait until it is clear whether the reply opens with the tag."""
    pending = ""
    state = "start"  # start -> speaking, or start -> thinking -> speaking
    async for token in tokens:
        if state == "speaking":
            yield token
            continue
        pending += token
        if state == "start":
            lead = pending.lstrip()
            if len(lead) < len(THINK_OPEN) and THINK_OPEN.startswith(lead):
                continue  # undecided (or only whitespace so far)
            if not lead.startswith(THINK_OPEN):
                state = "speaking"
                yield pending
                pending = ""
                continue
            state, pending = "thinking", lead[len(THINK_OPEN):]
        end = pending.find(THINK_CLOSE)
        if end < 0:
            pending = pending[-(len(THINK_CLOSE) - 1):]  # a tag split across tokens
            continue
        state, rest, pending = "speaking", pending[end + len(THINK_CLOSE):].lstrip(), ""
        if rest:
            yield rest
    if state == "start" and pending.strip():
        yield pending


async def _before(deadline: float, awaitable: Awaitable[T]) -> T:
    """Await with a deadline (loop time), in a scope that contains no ``yield``."""
    async with asyncio.timeout_at(deadline):
        return await awaitable


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined, comments and other fields
    skipped), per the SSE rules: an event ends at a blank line or at the end of the stream."""
    parts: list[str] = []
    size = 0
    async for line in lines:
        if line == "":
            if parts:
                yield "\n".join(parts)
                parts, size = [], 0
            continue
        if line.startswith(":"):
            continue  # comment (keep-alive)
        name, _, value = line.partition(":")
        if name != "data":
            continue  # event:, id:, retry:
        value = value[1:] if value.startswith(" ") else value
        if value.strip() == "[DONE]" and not parts:
            yield value  # servers rarely put the blank line after [DONE] before closing
            continue
        size += len(value)
        if size > MAX_EVENT_CHARS:
            raise ChatError("malformed", "an event of the stream is too large")
        parts.append(value)
    if parts:
        yield "\n".join(parts)


def _delta(data: str) -> tuple[str, bool]:
    """(text, finished) of one chunk; an ``error`` event raises."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ChatError("malformed", f"not a JSON event: {data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise ChatError("malformed", f"not a JSON object: {data[:80]!r}")
    if chunk.get("error"):
        raise ChatError("server", f"error in the stream: {_error_text(chunk)}")
    choices = chunk.get("choices")
    if not choices:
        return "", False  # e.g. a usage-only chunk
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise ChatError("malformed", "choices is not a list of objects")
    choice = choices[0]
    delta = choice.get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    if content is not None and not isinstance(content, str):
        raise ChatError("malformed", "delta.content is not text")
    return content or "", choice.get("finish_reason") is not None


async def _whole_completion(response: httpx.Response) -> str:
    body = await _read_bounded(response, MAX_EVENT_CHARS)
    try:
        message = json.loads(body)["choices"][0]["message"]
        content = message.get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ChatError("malformed", "the answer is neither an event stream nor a completion") from None
    if not isinstance(content, str):
        raise ChatError("malformed", "message.content is not text")
    return content


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


async def _error_message(response: httpx.Response) -> str:
    """The server's own words, from whichever error shape it uses."""
    try:
        body = await asyncio.wait_for(_read_bounded(response, MAX_ERROR_BODY), 2.0)
    except (TimeoutError, httpx.HTTPError):
        return response.reason_phrase or "error"
    try:
        return _error_text(json.loads(body))[:300]
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:300] or response.reason_phrase or "error"


def _error_text(payload: object) -> str:
    """OpenAI/vLLM ``{"error": {"message"}}``, Ollama ``{"error": "..."}``, FastAPI ``{"detail"}``,
    or ``{"message"}``."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, str):
            return error
        if isinstance(error, dict):
            for key in ("message", "detail", "msg"):
                text = error.get(key)
                if isinstance(text, str):
                    return text
            if "detail" in error:
                return json.dumps(error["detail"])[:300]
    return json.dumps(payload)[:300]


def _describe(exc: httpx.HTTPError) -> str:
    """The exception's kind and message; httpx messages carry no request headers (no API key)."""
    text = str(exc) or ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["ChatError", "ChatServer", "stream_chat", "without_reasoning"]
