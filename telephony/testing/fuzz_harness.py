"""Drives the fuzz strategies (fuzz_strategies.py) against one running bridge: the probes per
surface, a healthy reference call that must keep playing through it all, and a loop thread so
Hypothesis (synchronous) can feed an asyncio bridge that lives across examples.

Shared by tests/test_fuzz.py (in-process bridge) and scripts/fuzz.py (a bridge process). A probe
returns a short outcome label (counted by the script) and raises AssertionError when the bridge
broke a rule: a 5xx, an error body of the wrong shape, TwiML that is not XML, a stream closed with
an unexpected code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import xml.etree.ElementTree as ET
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import websockets
from twilio.request_validator import RequestValidator

from telephony.access import form_params
from telephony.testing.twilio_emulator import TwilioEmulator

T = TypeVar("T")
STREAM_CLOSE_OK = {1000, 1003, 1007, 1008, 1009, 1013}
FAILED_WORDS = ("fail", "error", "crash")
"""A fuzzed call may end (a ``stop``, an agent's ``end``), but never because the bridge failed:
the close reason of a retired call must not say so ("agent relay failed" when a bad message
crashed the relay client)."""
"""Close codes a fuzzed stream may end with: normal end, refused data, policy, too big, try later.
1011 (internal error) and 1006 (no close frame) mean the bridge failed."""
PROBE_TIMEOUT_S = 30.0


class LoopThread:
    """An event loop in a daemon thread; ``run`` submits a coroutine and waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = PROBE_TIMEOUT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Target:
    """Where the bridge is and what it trusts. ``base_url`` is also its PUBLIC_URL (signatures)."""

    base_url: str
    auth_token: str
    operator_key: str

    @property
    def stream_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/media-stream"

    def sign(self, url: str, params: dict[str, str]) -> str:
        return RequestValidator(self.auth_token).compute_signature(url, params)


WEBHOOK_FORM = {"AccountSid": "AC1", "From": "+15550001111", "To": "+15550002222", "Direction": "inbound"}
_sids = itertools.count(1)


def fresh_sid(prefix: str = "CA") -> str:
    return f"{prefix}fz{next(_sids):010d}"


async def signed_webhook(http: httpx.AsyncClient, target: Target, call_sid: str,
                         query: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A signed webhook as Twilio sends it; the stream URL and parameters (token included)."""
    params = {"CallSid": call_sid, **WEBHOOK_FORM}
    url = f"{target.base_url}/twiml?{urlencode(query)}"
    response = await http.post(url, data=params, headers={"X-Twilio-Signature": target.sign(url, params)})
    assert response.status_code == 200, response.text
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None, response.text
    return stream.attrib["url"], {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


async def open_stream(http: httpx.AsyncClient, target: Target, query: dict[str, str]) -> TwilioEmulator:
    call_sid = fresh_sid()
    url, params = await signed_webhook(http, target, call_sid, query)
    call = TwilioEmulator(url, call_sid=call_sid, stream_sid="MZ" + call_sid[2:], custom_parameters=params,
                          keep_audio=False)
    await call.connect()
    return call


def closed(call: TwilioEmulator) -> bool:
    return call.stats.close_code is not None or call.closed


def _error_shape(response: httpx.Response) -> None:
    try:
        error = response.json()["error"]
    except Exception as exc:
        raise AssertionError(f"{response.status_code} without a JSON error body: {response.text[:200]!r}") \
            from exc
    assert isinstance(error, dict) and "message" in error, response.text[:200]


def wire(message: str | bytes) -> str | bytes:
    """What goes on the socket: text as is, unless it holds a lone surrogate (not UTF-8 text at all):
    then its surrogate-escaped bytes, as a binary frame."""
    if isinstance(message, str):
        try:
            message.encode("utf-8")
        except UnicodeEncodeError:
            return message.encode("utf-8", "surrogatepass")
    return message


# ---- HTTP probes ------------------------------------------------------------------------------------
async def webhook_probe(http: httpx.AsyncClient, target: Target, case: dict[str, Any]) -> str:
    query = urlencode(case["query"], encoding="utf-8", errors="surrogatepass")
    url = f"{target.base_url}/twiml" + (f"?{query}" if query else "")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if case["raw"] is not None:
        body = case["raw"]
        headers["X-Twilio-Signature"] = "bad" if case["signed"] else ""
    else:
        body = urlencode(case["form"], encoding="utf-8", errors="surrogatepass").encode()
        if case["signed"]:  # signed over the form as the bridge (and Twilio) parse it
            headers["X-Twilio-Signature"] = target.sign(url, form_params(body))
    response = await http.post(url, content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.text[:300], case)
    if response.status_code == 200:
        ET.fromstring(response.text)  # raises unless well-formed
    else:
        _error_shape(response)
    return str(response.status_code)


async def operator_probe(http: httpx.AsyncClient, target: Target, case: dict[str, Any]) -> str:
    headers = {"Content-Type": "application/json"}
    if case["key"] == "valid":
        headers["Authorization"] = f"Bearer {target.operator_key}"
    elif case["key"] == "wrong":
        headers["Authorization"] = "Bearer not-the-key"
    response = await http.post(target.base_url + case["path"], content=case["body"], headers=headers)
    assert response.status_code < 500, (response.status_code, response.text[:300], case)
    if case["key"] != "valid":
        assert response.status_code in (401, 403), (response.status_code, case)
    if response.status_code >= 400:
        _error_shape(response)
    return str(response.status_code)


async def speech_probe(http: httpx.AsyncClient, target: Target, body: bytes) -> str:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {target.operator_key}"}
    async with http.stream("POST", target.base_url + "/v1/audio/speech", content=body,
                           headers=headers) as response:
        data = await response.aread()
    assert response.status_code < 500, (response.status_code, data[:300], body[:200])
    if response.status_code >= 400:
        assert b'"error"' in data, data[:200]
    return str(response.status_code)


# ---- stream probes ----------------------------------------------------------------------------------
@dataclass
class StreamFuzzer:
    """Messages after a valid ``start``, on one call reused until the bridge (or a ``stop``) ends it."""

    http: httpx.AsyncClient
    target: Target
    call: TwilioEmulator | None = None
    ended: list[tuple[int | None, str]] = field(default_factory=list)
    _stop_sent: bool = False

    async def probe(self, messages: list[str | bytes]) -> str:
        if self.call is None or closed(self.call):
            await self._retire()
            self.call = await open_stream(self.http, self.target, {"greeting": "", "agentUrl": "demo"})
            self._stop_sent = False
        for message in messages:
            # only a stop (or a message that may parse as one) may end the call
            self._stop_sent |= "stop" in (message if isinstance(message, str) else message.decode("latin-1"))
            await self.call.send_raw(wire(message))
        return "closed" if closed(self.call) else "open"

    async def _retire(self) -> None:
        if self.call is not None:
            call, self.call = self.call, None
            await call.wait_closed(5)
            await call.close()  # its reader and playback tasks
            self.ended.append((call.stats.close_code, call.stats.close_reason))
            assert call.stats.close_code in STREAM_CLOSE_OK, self.ended[-1]
            assert not any(w in call.stats.close_reason.lower() for w in FAILED_WORDS), self.ended[-1]
            assert not call.stats.invalid, call.stats.invalid[:3]
            assert call.stats.close_code != 1000 or self._stop_sent, \
                f"the call ended ({self.ended[-1]}) though no stop was sent"

    async def finish(self) -> None:
        """The last fuzzed call still works (a key is read back), or it ended with a fine code."""
        if self.call is None:
            return
        if not closed(self.call):
            before = len(self.call.played_utterances())
            await self.call.send_dtmf("7")
            assert await self.call.wait_for(
                lambda: len(self.call.played_utterances()) > before or closed(self.call), timeout=20)
        if closed(self.call):
            await self._retire()
        else:
            await self.call.hang_up()
        self.call = None


START_QUERY = {"greeting": "Hi.", "agentUrl": "demo"}


async def start_prototype(http: httpx.AsyncClient, target: Target) -> dict[str, str]:
    """The parameters a webhook with START_QUERY gives, the token replaced by a placeholder."""
    _, params = await signed_webhook(http, target, fresh_sid(), START_QUERY)
    return {**params, "token": "__TOKEN__"}


async def start_probe(http: httpx.AsyncClient, target: Target, message: str | bytes) -> str:
    """A fresh call's ``start``, mutated (see fuzz_strategies.mutated_start), then the valid one:
    refused with a policy code, or accepted (then it must speak its greeting)."""
    call_sid = fresh_sid()
    url, params = await signed_webhook(http, target, call_sid, START_QUERY)
    if isinstance(message, str):
        message = (message.replace("__TOKEN__", params["token"]).replace("__CALL_SID__", call_sid)
                   .replace("__STREAM_SID__", "MZ" + call_sid[2:]))
    call = TwilioEmulator(url, call_sid=call_sid, stream_sid="MZ" + call_sid[2:], custom_parameters=params,
                          keep_audio=False)
    await call.connect(send_start=False)
    try:
        await call.send_raw(wire(message))
        await call.send_start()
        assert await call.wait_for(lambda: closed(call) or call.stats.media_received > 0, timeout=15), \
            "neither refused nor speaking"
        if closed(call):
            await call.wait_closed(5)
            assert call.stats.close_code in STREAM_CLOSE_OK, (call.stats.close_code, call.stats.close_reason)
            return f"closed {call.stats.close_code}"
        assert not call.stats.invalid, call.stats.invalid[:3]
        return "accepted"
    finally:
        await call.close()


@dataclass
class AgentFuzzer:
    """A hostile ConversationRelay agent: the bridge dials it for a call, it sends fuzz."""

    http: httpx.AsyncClient
    target: Target
    call: TwilioEmulator | None = None
    socket: websockets.ServerConnection | None = None
    ended: list[tuple[int | None, str]] = field(default_factory=list)
    _server: Any = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._server = await websockets.serve(self._handler, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/relay"

    async def _handler(self, ws: websockets.ServerConnection) -> None:
        self.socket = ws
        self._connected.set()
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in ws:  # the bridge's setup, prompts, interrupts: read and dropped
                pass

    async def _open(self) -> None:
        self._connected.clear()
        self.socket = None
        self.call = await open_stream(self.http, self.target, {"greeting": "", "agentUrl": self.url})
        await asyncio.wait_for(self._connected.wait(), 15)

    async def probe(self, messages: list[str | bytes]) -> str:
        if (self.call is None or closed(self.call) or self.socket is None
                or self.socket.close_code is not None):
            await self._retire()
            await self._open()
        assert self.socket is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            for message in messages:
                await self.socket.send(wire(message))
        return "sent"

    async def _retire(self) -> None:
        if self.call is None:
            return
        if not closed(self.call):
            await self.call.hang_up()
            self.ended.append((None, "hung up by the fuzzer"))
        else:
            await self.call.wait_closed(5)
            await self.call.close()  # its reader and playback tasks
            self.ended.append((self.call.stats.close_code, self.call.stats.close_reason))
            assert self.call.stats.close_code in STREAM_CLOSE_OK, self.ended[-1]
            assert not any(w in self.call.stats.close_reason.lower() for w in FAILED_WORDS), self.ended[-1]
        assert not self.call.stats.invalid, self.call.stats.invalid[:3]
        self.call = None

    async def finish(self) -> None:
        """The last fuzzed call still speaks what its agent says, or ended with a fine code."""
        if self.call is not None and not closed(self.call) and self.socket is not None \
                and self.socket.close_code is None:
            before = len(self.call.played_utterances())
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.socket.send('{"type": "text", "token": "Still here.", "last": true}')
            assert await self.call.wait_for(
                lambda: len(self.call.played_utterances()) > before or closed(self.call), timeout=20)
        await self._retire()
        self._server.close()
        await self._server.wait_closed()


# ---- the reference call -----------------------------------------------------------------------------
REFERENCE_GREETING = "Hello, this is the reference call."


@dataclass
class ReferenceCall:
    """A healthy call on the same bridge; poked with a key now and then, it must answer every time."""

    call: TwilioEmulator
    pokes: int = 0

    @classmethod
    async def open(cls, http: httpx.AsyncClient, target: Target) -> ReferenceCall:
        return cls(await open_stream(http, target, {"greeting": REFERENCE_GREETING, "agentUrl": "demo"}))

    async def poke(self) -> None:
        """A key, once the answer to the last one has played (it keeps talking, with no backlog)."""
        if len(self.call.played_utterances()) >= 1 + self.pokes:
            self.pokes += 1
            await self.call.send_dtmf(str(self.pokes % 10))

    async def check(self) -> dict[str, Any]:
        """Every utterance (greeting + one answer per poke) played to its end mark, valid frames."""
        expected = 1 + self.pokes
        await self.call.wait_for(lambda: len(self.call.played_utterances()) >= expected
                                 or closed(self.call), timeout=30)
        stats = self.call.stats
        summary = {"utterances": len(stats.utterances), "played": len(self.call.played_utterances()),
                   "expected": expected, "underruns": stats.underruns, "underrun_ms": stats.underrun_ms,
                   "marks": stats.marks_received, "invalid": stats.invalid[:3],
                   "close": (stats.close_code, stats.close_reason)}
        assert not closed(self.call), summary
        assert not stats.invalid, summary
        assert summary["played"] >= expected and all(u.outcome == "played" for u in stats.utterances), summary
        assert stats.marks_received >= expected, summary
        return summary

    async def close(self) -> None:
        await self.call.hang_up()
