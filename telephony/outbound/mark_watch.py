"""Marks sent and not yet echoed, each with when its audio is due played: how a Twilio side that
stopped playing is noticed.

When the peer stops reading, the kernel's socket buffers can absorb many seconds of audio (a whole
29 s greeting in one measurement), so sends never block and no send-stall rule fires. But the pacer
knows when each mark's audio is due to have played (the playout clock's buffered time when it was
sent): a mark not echoed within ``grace_s`` after that means nobody is playing our audio, and
``on_overdue`` is told why. One timer per call, armed for the oldest mark only and re-armed lazily:
an echo never touches it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from telephony.outbound.marks import Mark


class MarkWatch:
    """Expects each sent mark's echo by its due time plus ``grace_s``."""

    def __init__(self, grace_s: float, on_overdue: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self._on_overdue = on_overdue
        self._clock = clock
        self._expected: OrderedDict[str, tuple[Mark, float]] = OrderedDict()
        """Wire name -> (mark, when its audio is due played), oldest first."""
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._expected)

    def expect(self, mark: Mark, buffered_s: float) -> None:
        """``mark`` goes out now, behind ``buffered_s`` of audio not yet played."""
        self._expected[mark.wire] = (mark, self._clock() + buffered_s)
        if self._timer is None:
            self._arm()

    def echoed(self, name: str) -> Mark | None:
        """The mark Twilio just echoed, or None if it is none of ours still expected (an echo after
        a ``clear``, a duplicate, a foreign name). Twilio echoes in order: every mark sent before
        it played too, and is no longer expected."""
        if name not in self._expected:
            return None
        while True:
            wire, (mark, _) = self._expected.popitem(last=False)
            if wire == name:
                return mark

    def clear(self) -> None:
        """Expect nothing more (after ``clear`` Twilio echoes every pending mark: none is overdue)."""
        self._expected.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def overdue(self) -> str | None:
        """Why playback looks stopped, if the oldest expected mark is past its grace."""
        if not self._expected:
            return None
        mark, due = next(iter(self._expected.values()))
        late = self._clock() - due
        if late < self.grace_s:
            return None
        return (f"Twilio stopped playing audio: mark {mark.wire} not echoed {late:.1f} s "
                "after its audio was due")

    def _arm(self) -> None:
        _, due = next(iter(self._expected.values()))
        delay = max(0.0, due + self.grace_s - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self._expected:
            return
        reason = self.overdue()
        if reason is None:
            self._arm()
            return
        self._on_overdue(reason)
