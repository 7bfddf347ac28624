"""Admission of background pre-renders (the webhook's greeting, before any call listens).

A burst of webhooks (a hundred calls ringing at once, or an attacker) must not take the engine from
calls already talking, nor claim unbounded memory: at most ``max_running`` pre-renders run at once
and ``max_queued`` more wait; past that a pre-render is refused (the call renders its greeting live
when it starts). A pre-render a call starts following stops being background work at once
(``promote``): it leaves the queue or gives back its slot, and the next one may start.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(eq=False)
class PrerenderTicket:
    """One pre-render's place: waiting for admission, holding a slot, or promoted to live work."""

    background: bool = True
    """Nobody follows it yet."""
    queued: bool = True
    """Waiting for admission."""
    holds_slot: bool = False


class PrerenderGate:
    """Counts running and waiting pre-renders and admits them in turn."""

    def __init__(self, max_running: int = 1, max_queued: int = 16) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.running = 0
        self.queued = 0
        self._admission = asyncio.Event()

    def ticket(self) -> PrerenderTicket | None:
        """A place in the queue, or None when the gate is full (the pre-render is skipped)."""
        if self.max_running <= 0 or self.running + self.queued >= self.max_running + self.max_queued:
            return None
        self.queued += 1
        return PrerenderTicket()

    async def admit(self, ticket: PrerenderTicket) -> None:
        """Wait for a slot (or for the ticket's promotion, which needs none)."""
        try:
            while ticket.background and self.running >= self.max_running:
                self._admission.clear()
                await self._admission.wait()
        finally:
            self._dequeue(ticket)
        if ticket.background:
            ticket.holds_slot = True
            self.running += 1

    def promote(self, ticket: PrerenderTicket) -> None:
        """A call follows this pre-render: it is live work from now on."""
        self._dequeue(ticket)  # if it was still waiting for admission
        ticket.background = False
        self.release(ticket)
        self._admission.set()  # wakes it if it waited (and the next pre-render if it ran)

    def release(self, ticket: PrerenderTicket) -> None:
        """The pre-render ended (or was promoted, or never ran): its place is free."""
        self._dequeue(ticket)
        if ticket.holds_slot:
            ticket.holds_slot = False
            self.running -= 1
            self._admission.set()

    def _dequeue(self, ticket: PrerenderTicket) -> None:
        if ticket.queued:
            ticket.queued = False
            self.queued -= 1
