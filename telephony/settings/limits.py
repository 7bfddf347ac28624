"""Settings that bound the bridge's work: playout lead, pre-renders, timeouts, calls, connections,
draining and worker processes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LimitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lead_ms: float = Field(240.0, ge=40.0, le=2000.0)
    """How far ahead of playback we keep Twilio's buffer (see telephony/playout.py)."""
    prerender_concurrency: int = Field(1, ge=0, le=1024)
    """Greeting pre-renders (webhook, before the stream) running at once; 0 turns them off."""
    prerender_queue: int = Field(16, ge=0, le=100_000)
    """Pre-renders waiting for one of those; a webhook past that skips its pre-render (the call
    then renders its greeting live, as a live call)."""
    prerender_timeout_s: float = Field(15.0, gt=0, le=600)
    """A pre-render no stream has followed this long after its webhook is cancelled."""
    mark_timeout_s: float = Field(3.0, gt=0, le=60)
    """A mark Twilio has not echoed this long after its audio should have played means Twilio
    stopped playing (or reading): the utterance fails and the call ends (telephony/speaker.py)."""
    start_timeout_s: float = Field(10.0, gt=0, le=60)
    token_ttl_s: float = Field(120.0, gt=0, le=3600)
    max_calls: int = Field(500, ge=1, le=100_000)
    header_timeout_s: float = Field(10.0, gt=0, le=300)
    """A connection's request headers (also the next request's, on a kept-alive connection) must
    arrive within this; otherwise 408 and closed (slowloris)."""
    body_timeout_s: float = Field(10.0, gt=0, le=300)
    """A request body must arrive within this after its headers; otherwise 408 and closed."""
    max_connections: int = Field(0, ge=0, le=1_000_000)
    """Open connections, all kinds; past it new ones get 503 and are closed. 0: sized from the
    process's file-descriptor limit (see telephony/conn_guard.py)."""
    max_pending: int = Field(256, ge=1, le=1_000_000)
    """Connections still unauthenticated, all peers together, counted apart for requests whose
    headers are not complete (past it: 503) and media streams that have not sent ``start`` (past
    it: closed with 1013)."""
    max_pending_per_peer: int = Field(32, ge=0, le=1_000_000)
    """The same, per peer IP address (0: no per-peer cap; behind a proxy every peer is the proxy)."""
    drain_s: float = Field(120.0, ge=0, le=86_400)
    """On SIGTERM live calls may run this long before they are wound down (see telephony/drain.py)."""
    gc_gen0_threshold: int = Field(50_000, ge=0, le=10_000_000)
    """Allocations between two young-generation garbage collections once the bridge has started
    (Python's default is 700). Every 20 ms frame allocates a few dozen short-lived objects, so at
    hundreds of calls the default collects gen0 hundreds of times a second and gen2 scans the whole
    heap (engine, voices, caches) every few seconds (4.3% of a lean bridge's samples at 300 calls;
    3.8% with this tuning: most of what is left is calls' start and teardown). The frame path
    makes no reference cycles of its own (reference counting frees it), so collecting less often
    costs little memory. With a non-zero value the objects alive after start-up are also frozen
    (``gc.freeze``): they are never scanned again. 0 leaves Python's collector as it is."""
    workers: int | None = Field(None, ge=1, le=1024)
    """Processes serving one port (telephony/workers.py); default one per core, 1 under
    --insecure-dev. Limits such as max_calls and engine_concurrency apply per process."""
