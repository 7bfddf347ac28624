"""One task per ``say``/``play`` the agent asks for, handed to the call in message order.

Why tasks at all: the reader must never wait on speech (it would stop reading the agent, and a
hook's ``interrupt`` could not reach it), yet every request's ``SpeechResult`` must be awaited so
that failures go back to the agent as ``error`` messages. Why an order gate: a ``play`` downloads
its audio first (``prepare``), and the text sent after it must not overtake it; so each job waits
until the job before it has *submitted* its speech (not finished it) before submitting its own,
and the download overlaps whatever is already queued. Why a bound: an agent that floods requests
gets ``error`` answers, not an unbounded pile of tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from telephony.agents.base import CallControl, SpeechOutcome, SpeechResult
from telephony.agents.relay.connection import describe

log = logging.getLogger(__name__)

MAX_PENDING_JOBS = 32
"""Speech requests (say/play) one agent may have waiting at once; more are refused with ``error``."""
SNIPPET_CHARS = 60
"""How much of a text an ``error`` quotes back to the agent."""

Speak = Callable[[CallControl], Awaitable[SpeechResult]]
"""Submits one request to the call and resolves when it has played, been cut, or failed."""
Prepare = Callable[[], Awaitable[Speak | None]]
"""Readies a request (a download, for ``play``); None when it was refused (already reported)."""
Settle = Callable[[SpeechResult], Awaitable[None]]
"""What the request's owner does with its result (report a failure, stop a cut reply)."""
ReportError = Callable[[str], Awaitable[None]]
"""Sends the agent an ``error`` with this description."""


def snippet(text: str) -> str:
    """``text`` on one line, at most ``SNIPPET_CHARS`` long, for quoting in an ``error``."""
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def ready(speak: Speak) -> Prepare:
    """A ``Prepare`` for a request that needs no preparation (text)."""

    async def prepared() -> Speak:
        return speak

    return prepared


async def report_failure(report_error: ReportError, result: SpeechResult, text: str) -> None:
    """Tell the agent a request failed, quoting it (``result.text``, else ``text``)."""
    if result.outcome is SpeechOutcome.FAILED:
        what = snippet(result.text or text) or "(empty)"
        await report_error(f"speech failed for {what!r}: {result.error or 'unknown error'}")


class SpeechJobs:
    """The speech requests of one call, oldest first; ``limit`` of them at most."""

    def __init__(self, call: CallControl, report_error: ReportError, *,
                 limit: int = MAX_PENDING_JOBS) -> None:
        self._call = call
        self._report_error = report_error
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_submitted: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    async def room_for(self, what: str) -> bool:
        """Whether one more request fits; if not, the agent is told ``what`` is not spoken."""
        if len(self._tasks) < self.limit:
            return True
        await self._report_error(f"too many speech requests waiting ({self.limit}); not spoken: "
                                 f"{snippet(what)!r}")
        return False

    def start(self, prepare: Prepare, *, text: str, settle: Settle,
              cleanup: Callable[[], None] | None = None) -> None:
        """Run one request as its own task: prepare, wait for the previous job to submit, submit,
        await the result and ``settle`` it. ``text`` names it if the call side raises;
        ``cleanup`` runs however the job ends (cancelled too)."""
        previous = self._last_submitted
        submitted = asyncio.Event()
        self._last_submitted = submitted

        async def job() -> None:
            try:
                speak = await prepare()
                if previous is not None:
                    await previous.wait()
                submitted.set()
                if speak is None:
                    return
                try:
                    result = await speak(self._call)
                except Exception as exc:  # logged with its traceback and reported, never lost
                    log.exception("call-side speech failed")
                    result = SpeechResult(text=text, outcome=SpeechOutcome.FAILED, error=describe(exc))
                await settle(result)
            finally:
                submitted.set()  # never hold up the jobs behind this one
                if cleanup is not None:
                    cleanup()

        task = asyncio.create_task(job(), name="relay-speech")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) for every job started so far to end."""
        jobs = list(self._tasks)
        if jobs:
            await asyncio.wait(jobs, timeout=timeout)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The jobs still running (for the owner to cancel on stop)."""
        return list(self._tasks)

    def forget(self) -> None:
        """Drop every job from the table (they have been cancelled)."""
        self._tasks.clear()
