"""Bounded connections: nobody without a credential can hold the bridge's file descriptors.

What an anonymous peer can hold, and for how long:

- **Request headers** must arrive within ``header_timeout_s`` of the connection opening (or of the
  previous response, on a kept-alive connection); otherwise the peer gets 408 and is closed. uvicorn
  has no such timeout (its keep-alive timer is disarmed by the first byte), so a slowloris client
  that sends one header byte a minute held a connection for ever; an ASGI middleware cannot help,
  since it never sees a request whose headers do not complete. Hence ``GuardedH11Protocol``.
- **Request bodies** must arrive within ``body_timeout_s`` of the headers (408 and closed); the
  rest of a body refused early (413, 401) is read for at most ``LINGER_BYTES``, then closed.
- **Unauthenticated connections** (headers not complete yet, or a media stream that has not sent
  ``start``) are capped globally (``max_pending``) and per peer IP (``max_pending_per_peer``): an
  HTTP connection past the cap gets 503 and is closed at once, a stream past it is closed with
  1013 before anything is read from it.
- **All connections** are capped at ``max_connections`` (503 and closed at accept), which is sized
  from the process's file-descriptor limit (see ``FdBudget``) so that reaching the cap never
  starves ``/health``, the listening socket or a live call's own outbound connections of fds.

Every refusal is counted (``/health`` shows them) and logged, at most once per ``LOG_EVERY_S`` per
kind with the number suppressed since, so a flood cannot fill the log either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
RESERVED_FDS = 64
"""stdio, log files, the listening socket, epoll, engine/model and voice files, threads' pipes."""
OUTBOUND_FDS_PER_CALL = 3
"""A live call's own connections besides Twilio's: its agent, an engine request, a recording."""
BODY_BACKSTOP_S = 1.0
"""The protocol's body deadline comes this long after the routes' own (which answer in their
route's error shape), so it only ends bodies nobody is reading."""
LINGER_BYTES = 1 << 20
LINGER_S = 2.0
"""After an early answer (413, 401) to a request whose body is still coming, up to this much of
the body is read and dropped before the connection is closed: closing at once would reset it, and
the client would see a connection error instead of the answer. A 200 MB body is cut off here."""
MAX_AUTO_CONNECTIONS = 16_384
FD_TARGET = 1 << 20
"""Raise the soft RLIMIT_NOFILE to the hard limit, but no further than this."""


@dataclass(frozen=True)
class FdBudget:
    """How the process's file descriptors are shared out (logged at start, documented in README)."""

    fd_limit: int
    raised_from: int
    max_calls: int
    max_connections: int
    max_pending: int
    max_pending_per_peer: int
    enough: bool
    """False when the fd limit cannot hold ``max_calls`` calls (a warning is logged)."""

    def describe(self) -> str:
        raised = f" (raised from {self.raised_from})" if self.raised_from != self.fd_limit else ""
        return (f"fd budget: limit {self.fd_limit}{raised} = {RESERVED_FDS} reserved + "
                f"{OUTBOUND_FDS_PER_CALL} outbound x {self.max_calls} calls + inbound connections "
                f"capped at {self.max_connections} (unauthenticated: {self.max_pending} in all, "
                f"{self.max_pending_per_peer or 'no cap'} per peer)")


def raise_fd_limit(target: int = FD_TARGET) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (capped at ``target``); returns (old, new).

    The soft limit is often 1024 while the hard one is far higher: the difference is fds the
    process may have for the asking."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return soft, want
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft, soft if soft != resource.RLIM_INFINITY else target


def plan_budget(*, fd_limit: int, raised_from: int, max_calls: int, max_connections: int,
                max_pending: int, max_pending_per_peer: int) -> FdBudget:
    """Size the caps from the fd limit. An explicit ``max_connections`` (non-zero) is kept."""
    available = fd_limit - RESERVED_FDS - OUTBOUND_FDS_PER_CALL * max_calls
    enough = available >= max_calls + 64
    if max_connections <= 0:
        if enough:
            max_connections = min(available, MAX_AUTO_CONNECTIONS)
        else:  # share what there is: one inbound plus its outbound fds per connection
            max_connections = max(64, (fd_limit - RESERVED_FDS) // (1 + OUTBOUND_FDS_PER_CALL))
    pending = min(max_pending, max(1, max_connections // 2))
    return FdBudget(fd_limit, raised_from, max_calls, max_connections, pending,
                    min(max_pending_per_peer, pending) if max_pending_per_peer else 0, enough)


class PendingCount:
    """Unauthenticated connections of one kind, in all and per peer address."""

    def __init__(self, max_total: int, max_per_peer: int) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.total = 0
        self._by_peer: Counter[str] = Counter()

    def acquire(self, peer: str) -> str | None:
        """Count one more from ``peer``; returns why not (the refusal's reason), or None."""
        if self.total >= self.max_total:
            return "pending_global"
        if self.max_per_peer and self._by_peer[peer] >= self.max_per_peer:
            return "pending_per_peer"
        self.total += 1
        self._by_peer[peer] += 1
        return None

    def release(self, peer: str) -> None:
        self.total -= 1
        self._by_peer[peer] -= 1
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]


class ConnectionGuard:
    """The counts shared by every connection of one server, and the refusal log.

    Requests whose headers are still coming and streams that have not sent ``start`` are counted
    apart (each under the same caps), so a stream past its cap can still be upgraded and told
    1013, and a flood of one kind does not lock out the other.
    """

    def __init__(self, *, max_connections: int, max_pending: int, max_pending_per_peer: int,
                 header_timeout_s: float, body_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_pending_per_peer = max_pending_per_peer
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.requests = PendingCount(max_pending, max_pending_per_peer)
        self.streams = PendingCount(max_pending, max_pending_per_peer)
        self._waiting: OrderedDict[int, GuardedH11Protocol] = OrderedDict()
        """Connections waiting for their request's headers, oldest first (for eviction)."""
        self.refused: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}

    @property
    def pending(self) -> int:
        return self.requests.total + self.streams.total

    # ---- connections waiting for headers ---------------------------------------------------------
    def admit(self, connection: GuardedH11Protocol) -> str | None:
        """Count ``connection`` as waiting for headers; returns why not (the refusal's reason).

        At the global cap the OLDEST waiting connection is closed to make room, rather than the
        newcomer refused: idle connections from many addresses (a slowloris spread over a botnet,
        each address under its per-peer cap) would otherwise lock every new caller and webhook
        out. A real request sends its headers within milliseconds, so it is never the oldest for
        long; an attacker's connections end up evicting each other. The per-peer cap still
        refuses the newcomer: one address cannot evict others' connections past its share.
        """
        refusal = self.requests.acquire(connection.peer)
        if refusal == "pending_global" and self._waiting:
            _, oldest = self._waiting.popitem(last=False)
            oldest.evict()
            refusal = self.requests.acquire(connection.peer)
        if refusal is None:
            self._waiting[id(connection)] = connection
        return refusal

    def done_waiting(self, connection: GuardedH11Protocol) -> None:
        """``connection``'s headers are in, or it closed: it no longer counts."""
        self._waiting.pop(id(connection), None)
        self.requests.release(connection.peer)

    # ---- refusals --------------------------------------------------------------------------------
    def refuse(self, reason: str, peer: str, what: str) -> None:
        """Count and (rate-limited) log a refused or timed-out connection."""
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._last_logged.get(reason, -LOG_EVERY_S) < LOG_EVERY_S:
            self._suppressed[reason] += 1
            return
        self._last_logged[reason] = now
        more = self._suppressed.pop(reason, 0)
        log.warning("%s from %s refused: %s (%s)%s", what, peer, reason.replace("_", " "),
                    self._limits(reason), f"; {more} more like it since the last report" if more else "")

    def _limits(self, reason: str) -> str:
        return {
            "connections": f"{self.max_connections} connections open",
            "pending_global": f"{self.max_pending} unauthenticated connections open",
            "evicted": f"the oldest of {self.max_pending} connections waiting for headers",
            "pending_per_peer": f"{self.max_pending_per_peer} unauthenticated connections from it",
            "header_timeout": f"headers not received within {self.header_timeout_s:g} s",
            "idle_timeout": f"nothing sent within {self.header_timeout_s:g} s",
            "body_timeout": f"body not received within {self.body_timeout_s:g} s",
        }.get(reason, reason)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pending_requests": self.requests.total,
                               "pending_streams": self.streams.total, "refused": dict(self.refused),
                               "max_connections": self.max_connections,
                               "max_pending": self.max_pending,
                               "max_pending_per_peer": self.max_pending_per_peer}
        return out


def _raw_response(status: int, reason: bytes, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response in our one JSON shape, for a connection we are closing
    without (or before) a request: h11 is bypassed, so nothing else may be written after it."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n%s\r\n" % (status, reason, len(body),
                                              b"retry-after: 1\r\n" if status == 503 else b"")) + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap at accept and header/body deadlines.

    Made per server by ``guarded_protocol`` (uvicorn builds protocols from a class, with no room
    for extra arguments).
    """

    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.peer = self.client[0] if self.client else "unknown"
        self._pending = False
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_body = False
        self._linger_left: int | None = None
        self._received = 0
        self._served = False
        if len(self.connections) > self.guard.max_connections:
            self._refuse("connections")
            return
        self._await_headers()

    def _refuse(self, reason: str) -> None:
        self.guard.refuse(reason, self.peer, "connection")
        self.transport.write(_raw_response(503, b"Service Unavailable", "server_busy",
                                           "too many connections; retry shortly"))
        self.transport.close()

    def _await_headers(self) -> None:
        """The connection now waits for a request: it is unauthenticated until the headers are in."""
        if not self._pending:
            refusal = self.guard.admit(self)
            if refusal is not None:
                self._refuse(refusal)
                return
            self._pending = True
        self._received = 0
        self._arm(self.guard.header_timeout_s, "header_timeout")

    def _headers_done(self) -> None:
        if self._pending:
            self._pending = False
            self.guard.done_waiting(self)
        self._disarm()

    def evict(self) -> None:
        """Closed to make room for a newer connection at the global cap (its count is released
        by the guard, which already took it off the waiting list)."""
        self._pending = False
        self.guard.requests.release(self.peer)
        self._disarm()
        self.guard.refuse("evicted", self.peer, "idle connection")
        self.transport.close()

    def _arm(self, delay: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, self._expired, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, reason: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if reason == "linger" or (reason == "header_timeout" and not self._received and self._served):
            self.transport.close()  # an idle kept-alive connection: closed silently, as uvicorn does
            return
        if reason == "header_timeout" and not self._received:
            # Connected and silent: close without an answer (nothing was asked; a 408 written
            # here could be read as the answer to a request sent just after).
            self.guard.refuse("idle_timeout", self.peer, "connection")
            self.transport.close()
            return
        self.guard.refuse(reason, self.peer, "request")
        if reason == "header_timeout" or not self.cycle.response_started:
            what = "headers" if reason == "header_timeout" else "body"
            self.transport.write(_raw_response(408, b"Request Timeout", "request_timeout",
                                               f"request {what} not received in time"))
            if reason == "body_timeout":
                self.cycle.disconnected = True  # the app's own answer, if any, goes nowhere
        self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:  # a new request's headers are in
            self._headers_done()
            self._waiting_body = self.cycle.more_body
            if self._waiting_body:  # a backstop: routes that read a body time out first
                self._arm(self.guard.body_timeout_s + BODY_BACKSTOP_S, "body_timeout")
        elif self._waiting_body and self.cycle is not None and not self.cycle.more_body:
            self._waiting_body = False
            self._disarm()

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._headers_done()  # the stream counts itself as pending until ``start`` (media_stream)
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # may start a pipelined request (a new cycle)
        self._served = True
        if not self.transport.is_closing() and self.cycle is cycle:
            if self._waiting_body:  # answered (413, 401...) before its body was in: linger
                self._linger_left = LINGER_BYTES
                self._arm(LINGER_S, "linger")
                return
            self._await_headers()

    def data_received(self, data: bytes) -> None:
        """While lingering, the rest of a refused body is read and dropped, up to LINGER_BYTES."""
        self._received += len(data)
        if self._linger_left is not None:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self._disarm()
                self.transport.close()
                return
        super().data_received(data)
        if self._linger_left is not None and self.conn.their_state is h11.IDLE:
            self._linger_left = None  # the client finished its body: an ordinary idle connection
            self._waiting_body = False
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if getattr(self, "_pending", False):
            self._pending = False
            self.guard.done_waiting(self)
        super().connection_lost(exc)


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class bound to ``guard`` (what ``uvicorn.Config(http=...)`` takes)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
