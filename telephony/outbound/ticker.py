"""One pacing timer per process (per event loop), shared by every call's pacer.

Why: a pacer that waits for room in Twilio's buffer used to sleep in its own task, one timer
scheduled, fired and its task woken per call every 60 ms tick. With hundreds of calls that is
hundreds of timers a tick doing the same thing at nearly the same moment. Here one timer fires
per tick and calls every pacer that joined; a pacer joins while it has audio waiting for room and
leaves when its queue is empty, it is cut, or its task ends, so an idle or finished call costs
nothing and a process with no call speaking has no timer at all.

The ticks are on a fixed grid (``call_at`` from the previous due time, not ``call_later`` from
now), so a busy loop delays a tick but does not make the cadence drift.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

Tick = Callable[[], None]


class Ticker:
    """Calls each member once per ``period_s`` while it has any member."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float) -> None:
        self._loop = loop
        self.period_s = period_s
        self._members: dict[Tick, None] = {}
        """Insertion-ordered set: pacers are served in the order they joined."""
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._ticking = False
        """Members are being called: the timer is re-armed (or not) once they all ran."""

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    @property
    def armed(self) -> bool:
        """A timer is scheduled (only while there are members)."""
        return self._handle is not None

    def join(self, member: Tick) -> None:
        """Call ``member`` at every tick from the next one on (joining twice is joining once)."""
        if member in self._members:
            return
        self._members[member] = None
        if self._handle is None and not self._ticking:
            self._due = self._loop.time() + self.period_s
            self._handle = self._loop.call_at(self._due, self._tick)

    def leave(self, member: Tick) -> None:
        """No more calls to ``member``; the timer goes with the last member."""
        if member not in self._members:
            return
        del self._members[member]
        if not self._members and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = None
        self._ticking = True
        try:
            for member in list(self._members):
                if member in self._members:  # an earlier member's tick may have made it leave
                    try:
                        member()
                    except Exception:  # one call's bug must not stop every other call's audio
                        log.exception("pacer tick failed")
                        self._members.pop(member, None)
        finally:
            self._ticking = False
        if self._members:
            now = self._loop.time()
            self._due += self.period_s
            if self._due < now:  # the loop was late by more than a tick: resume from now
                self._due = now + self.period_s
            self._handle = self._loop.call_at(self._due, self._tick)


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Ticker]] = (
    weakref.WeakKeyDictionary())


def ticker_for(period_s: float, loop: asyncio.AbstractEventLoop | None = None) -> Ticker:
    """The running loop's ticker of that period (created on first use)."""
    loop = loop or asyncio.get_running_loop()
    by_period = _tickers.setdefault(loop, {})
    ticker = by_period.get(period_s)
    if ticker is None:
        ticker = by_period[period_s] = Ticker(loop, period_s)
    return ticker
