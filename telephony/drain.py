"""Graceful drain: a deploy (SIGTERM) lets live calls finish instead of cutting them.

The steps, each logged:

1. ``/health`` answers 503 ``{"status": "draining"}`` so the load balancer stops sending traffic,
   and new webhooks answer 503 so Twilio falls back to the number's fallback URL.
2. Media streams keep being accepted: a webhook answered before the drain has handed Twilio a
   token, and its stream arrives a moment later (``stream_expected`` / ``stream_arrived`` track
   these, for at most ``STREAM_ARRIVAL_S``).
3. Live calls run to their end, or for at most ``drain_s`` (``VOICE_BRIDGE_DRAIN_S``); then each
   finishes the utterance the caller is hearing, nothing queued after it, and closes.
4. When no call is left (or ``FINISH_GRACE_S`` after the wind-down, whatever still runs), the
   server shuts down and the process exits 0.

A second SIGTERM, or SIGINT, ends at once (telephony/server.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

STREAM_ARRIVAL_S = 15.0
"""How long after its webhook a call's stream may still arrive during a drain (Twilio opens it
within a second or two)."""
FINISH_GRACE_S = 30.0
"""After ``drain_s``: time for the utterances in progress to end before the calls are cut."""
POLL_S = 0.1
MAX_EXPECTED = 10_000


class DrainState:
    """Whether the server drains, and which answered webhooks' streams have not arrived yet."""

    def __init__(self) -> None:
        self.draining = False
        self.started_at: float | None = None
        self._expected: OrderedDict[str, float] = OrderedDict()

    def stream_expected(self, call_sid: str) -> None:
        """A webhook was answered: its stream should follow within ``STREAM_ARRIVAL_S``."""
        self._expected[call_sid] = time.monotonic() + STREAM_ARRIVAL_S
        self._expected.move_to_end(call_sid)
        while len(self._expected) > MAX_EXPECTED:
            self._expected.popitem(last=False)

    def stream_arrived(self, call_sid: str) -> None:
        self._expected.pop(call_sid, None)

    def awaited_streams(self) -> int:
        """Answered webhooks whose stream may still arrive (expired ones are forgotten)."""
        now = time.monotonic()
        for call_sid in [c for c, deadline in self._expected.items() if deadline <= now]:
            del self._expected[call_sid]
        return len(self._expected)

    def begin(self) -> None:
        self.draining = True
        self.started_at = time.monotonic()

    def elapsed_s(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at


async def drain(bridge: Any, drain_s: float) -> None:
    """Run the drain (steps 1-3 above) and return when the server may shut down."""
    state: DrainState = bridge.drain
    state.begin()
    log.warning("draining: %d live call(s), %d answered webhook(s) awaiting their stream; /health "
                "and new webhooks now answer 503; calls may run up to %.0f s",
                len(bridge.calls), state.awaited_streams(), drain_s)
    deadline = time.monotonic() + drain_s
    last = None
    while time.monotonic() < deadline:
        now = (len(bridge.calls), state.awaited_streams())
        if now != last:
            if last is not None:
                log.info("draining: %d live call(s), %d stream(s) still expected", *now)
            last = now
        if now == (0, 0):
            log.warning("drain: every call ended after %.1f s; shutting down", state.elapsed_s())
            return
        await asyncio.sleep(POLL_S)
    sessions = list(bridge.calls.values())
    log.warning("drain: %.0f s passed with %d call(s) still live: each finishes the utterance in "
                "progress, then closes", drain_s, len(sessions))
    winding = [asyncio.create_task(s.wind_down("server restarting"), name="wind-down")
               for s in sessions]
    try:
        _, late = await asyncio.wait(winding, timeout=FINISH_GRACE_S)
    except asyncio.CancelledError:
        for task in winding:
            task.cancel()
        raise
    for task in late:
        task.cancel()
    await asyncio.gather(*winding, return_exceptions=True)
    if late:
        log.warning("drain: %d call(s) still speaking after %.0f s more; closing them now",
                    len(late), FINISH_GRACE_S)
    log.warning("drain: done after %.1f s; shutting down", state.elapsed_s())
