"""A fleet of interchangeable remote servers (GPU TTS or speech-recognition servers behind one API).

Which server takes the next request, and which ones to leave alone for a while:

* **Fewest in flight first.** GPU servers batch, but each request in flight still delays the others'
  first audio, so the least-loaded server answers fastest. Ties go round-robin so an idle fleet is
  still spread evenly (and every server's connection pool stays warm).
* **Back-off.** A server that fails (refused connection, 5xx, a stalled stream, a timeout before the
  first byte) is skipped for ``backoff_s``; afterwards exactly one request at a time probes it. A
  success brings it back; a failed probe doubles the back-off (capped at ``max_backoff_s``).
* **Failover.** ``pick(exclude=...)`` lets the caller retry a request that failed before its first
  byte on another server; whether a retry is safe (no audio delivered yet) is the caller's decision.

Nothing here is shared between processes: each bridge process keeps its own view of the fleet, which
is correct because every process talks to the servers itself.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypedDict

from tts_core.errors import Overloaded, UpstreamFailed


class ServerState(StrEnum):
    UP = "up"
    """Taking requests."""
    BACKOFF = "backoff"
    """Failed recently; skipped until its back-off ends."""
    PROBING = "probing"
    """Back-off over; one request is testing it."""


class ServerSnapshot(TypedDict):
    """One server's state as /health and /metrics show it (``ServerStats.snapshot``)."""

    url: str
    state: str
    in_flight: int
    requests: int
    failures: int
    first_byte_ms_p50: float | None
    first_byte_ms_p95: float | None
    retry_in_s: float
    last_error: str


@dataclass
class ServerStats:
    """One server as this process sees it (for /health and /metrics)."""

    url: str
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    state: ServerState = ServerState.UP
    backoff_until: float = 0.0
    backoff_s: float = 0.0
    last_error: str = ""
    first_byte_s: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    """Recent times from request to first byte of the body (not headers)."""

    def snapshot(self, now: float) -> ServerSnapshot:
        latencies = sorted(self.first_byte_s)

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1)

        return {
            "url": self.url, "state": self.state.value, "in_flight": self.in_flight,
            "requests": self.requests, "failures": self.failures,
            "first_byte_ms_p50": pct(0.5), "first_byte_ms_p95": pct(0.95),
            "retry_in_s": round(max(0.0, self.backoff_until - now), 1)
            if self.state is ServerState.BACKOFF else 0.0,
            "last_error": self.last_error,
        }


class NoServerAvailable(Overloaded, RuntimeError):
    """Every server is excluded or backing off."""

    kind = "no_server_available"


class ServerFailed(UpstreamFailed):
    """One server of a fleet failed before it delivered anything (recorded with ``Fleet.failed``):
    the request may be retried on another server. Shared by the remote engine and recogniser."""

    kind = "server_failed"


class Fleet:
    """Chooses servers and keeps their health. Not thread-safe: use from one event loop."""

    def __init__(self, urls: Iterable[str], *, backoff_s: float = 5.0, max_backoff_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.servers = [ServerStats(url) for url in urls]
        if not self.servers:
            raise ValueError("a fleet needs at least one server URL")
        if len({s.url for s in self.servers}) != len(self.servers):
            raise ValueError("server URLs must be distinct")
        self.backoff_s = backoff_s
        self.max_backoff_s = max(max_backoff_s, backoff_s)
        self._clock = clock
        self._turn = itertools.count()

    def pick(self, exclude: Iterable[ServerStats] = ()) -> ServerStats:
        """The server for the next request; raises NoServerAvailable.

        A server whose back-off has ended is probed by one request at a time. When every server is
        backing off, the one whose back-off ends first is tried anyway: refusing all calls because
        the whole fleet blipped would turn a short outage into a long one.
        """
        now = self._clock()
        excluded = {id(s) for s in exclude}
        candidates: list[ServerStats] = []
        for server in self.servers:
            if id(server) in excluded:
                continue
            if server.state is ServerState.BACKOFF and now >= server.backoff_until:
                server.state = ServerState.PROBING
            if server.state is ServerState.PROBING and server.in_flight > 0:
                continue  # one probe at a time
            if server.state is not ServerState.BACKOFF:
                candidates.append(server)
        if not candidates:
            waiting = [s for s in self.servers if id(s) not in excluded]
            if not waiting:
                raise NoServerAvailable("no server left to try")
            return min(waiting, key=lambda s: (s.backoff_until, s.in_flight))
        least = min(s.in_flight for s in candidates)
        tied = [s for s in candidates if s.in_flight == least]
        return tied[next(self._turn) % len(tied)]

    def begin(self, server: ServerStats) -> None:
        server.in_flight += 1
        server.requests += 1

    def end(self, server: ServerStats) -> None:
        server.in_flight = max(0, server.in_flight - 1)

    def succeeded(self, server: ServerStats, first_byte_s: float | None = None) -> None:
        """The server delivered (its first byte, or a whole answer)."""
        if first_byte_s is not None:
            server.first_byte_s.append(first_byte_s)
        server.consecutive_failures = 0
        server.backoff_s = 0.0
        server.state = ServerState.UP

    def failed(self, server: ServerStats, reason: str) -> None:
        """The server failed in a way that says something about the server (not about our request)."""
        server.failures += 1
        server.consecutive_failures += 1
        server.last_error = reason[:300]
        server.backoff_s = min(self.max_backoff_s, server.backoff_s * 2 if server.backoff_s
                               else self.backoff_s)
        server.backoff_until = self._clock() + server.backoff_s
        server.state = ServerState.BACKOFF

    def snapshot(self) -> list[ServerSnapshot]:
        now = self._clock()
        return [s.snapshot(now) for s in self.servers]
