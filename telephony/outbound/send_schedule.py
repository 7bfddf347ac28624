"""When a call's pacer sends, and how: at once from the shared ticker, or awaiting in its task.

Why two paths: most of a call's outbound CPU was the machinery around each 20 ms frame (a timer
and a task switch per call every tick, three awaits and a lock per frame), not the frame itself.
When the sender can send without waiting (``SendsAtOnce``: ``StreamSender`` over the lean
listener while Twilio reads), what is due goes out synchronously, in one send: when audio is
queued, and then from the process's shared ``Ticker`` while Twilio's buffer holds the lead.
Otherwise (the ASGI route, a socket whose buffer is full, a ``clear`` still in flight) the call's
task sends, awaiting each message, so backpressure and the sender's stall watchdog work as before.

A call is on the ticker only while it has audio waiting for room: an idle call costs nothing, and
a call that ends (``stop``, or its task cancelled) leaves it, with the timer going with the last.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

from telephony.outbound.ticker import Ticker, ticker_for


@runtime_checkable
class SendsAtOnce(Protocol):
    """A sender that can also send without awaiting while its socket takes data at once."""

    def can_send_now(self) -> bool:
        """A send now would not wait (no send in progress, the socket's buffer has room)."""

    def send_now(self, texts: list[str]) -> None:
        """Send ``texts`` in order, without waiting (only right after ``can_send_now``)."""


class Paced(Protocol):
    """What the schedule drives (the ``Pacer``)."""

    def queued(self) -> bool:
        """Audio (or a mark) is waiting to be sent."""

    def has_due(self) -> bool:
        """Something may be sent now (Twilio's buffer has room, or only a mark is left)."""

    def send_due_now(self, at_once: SendsAtOnce) -> None:
        """Send everything due now without waiting."""

    async def send_due(self) -> None:
        """Send everything due now, awaiting each message."""


class SendSchedule:
    """One call's sending: kicked when audio is queued and at each tick while it waits for room."""

    def __init__(self, paced: Paced, sender: object, tick_s: float) -> None:
        self._paced = paced
        self._at_once = sender if isinstance(sender, SendsAtOnce) else None
        self._tick_s = tick_s
        self._ticker: Ticker | None = None
        """The loop's shared ticker (found when ``run`` starts: it needs the running loop)."""
        self._running = False
        self._task_sends = False
        """The task owns sending until it has sent what was due (a kick then leaves it alone)."""
        self._wake = asyncio.Event()

    @property
    def on_ticker(self) -> bool:
        """Waiting for room in Twilio's buffer on the shared ticker."""
        return self._ticker is not None and self.kick in self._ticker

    async def run(self) -> None:
        """The call's sender task: sends only when a send must be awaited; otherwise it waits."""
        ticker = self._ticker = ticker_for(self._tick_s)
        self._running = True
        try:
            while True:
                self.kick()
                if not self._wake.is_set():
                    await self._wake.wait()
                self._wake.clear()
                await self._paced.send_due()
                self._task_sends = False
        finally:
            self._running = False
            self._task_sends = False
            ticker.leave(self.kick)

    def stop(self) -> None:
        """Send nothing more (the call is closing; its task is being cancelled)."""
        self._running = False
        self.settle()

    def kick(self) -> None:
        """Send what is due now: at once when the sender allows it, else through the task."""
        if not self._running or self._task_sends:
            return  # not started (or over), or the task is sending: it comes back for the rest
        paced, at_once = self._paced, self._at_once
        if at_once is not None and at_once.can_send_now():
            paced.send_due_now(at_once)
        elif paced.has_due():
            self._task_sends = True
            self._wake.set()
            return
        self.settle()

    def settle(self) -> None:
        """On the ticker while audio waits for room; off it once nothing is queued (or stopped)."""
        ticker = self._ticker
        if ticker is None:
            return
        if self._running and self._paced.queued():
            ticker.join(self.kick)
        else:
            ticker.leave(self.kick)
