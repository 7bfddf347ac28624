"""One call's side of the ConversationRelay session, between ``on_start`` and ``on_stop``.

Why it is separate from ``RelayAgent``: the agent object exists before the call (it is built from
configuration) and outlives a failed connect; this is the state that only exists once the agent
application answered: the call, the socket, the speech jobs, the reply being streamed, the one
reader task, and how the session ends. Each message's meaning lives here (``on_text``, ``on_play``,
``on_end``); ``dispatch`` decides which one a frame is.

Tasks, all owned here and cancelled by ``stop``: one *reader* that handles the agent's messages
strictly in order and never waits on speech (except for ``end``, which by definition waits for
what is queued), and the speech jobs (``SpeechJobs``). Nothing an agent sends is lost silently: it
is spoken, or reported (``interrupt`` for what the caller talked over, ``error`` for failures,
refusals and discarded tokens). If the agent disconnects, what it already sent is still spoken
(for at most ``DISCONNECT_GRACE_S``) before the call's stream closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import httpx

from telephony.agents.base import CallControl, SpeechResult
from telephony.agents.play_budget import PlayBudget
from telephony.agents.relay.connection import CLOSE_TIMEOUT_S, RelayConnection
from telephony.agents.relay.dispatch import dispatch_frame
from telephony.agents.relay.play_loader import PlayLoader
from telephony.agents.relay.speech_jobs import SpeechJobs, report_failure
from telephony.agents.relay.text_replies import TextReplies
from telephony.relay_protocol import End, Error, Play, Text, ToAgentMessage

log = logging.getLogger(__name__)

END_GRACE_S = 1.0
"""``stop`` lets a ``call.end`` the reader is running finish for this long before cancelling it."""
DISCONNECT_GRACE_S = 120.0
"""When the agent disconnects, what it already sent is still spoken, for at most this long."""


class RelaySession:
    """The relay state of one call whose agent application is connected."""

    def __init__(self, call: CallControl, connection: RelayConnection, *, http: httpx.AsyncClient,
                 play_max_bytes: int, play_budget: PlayBudget, max_message_bytes: int,
                 end_hangs_up: bool) -> None:
        self.call = call
        self.connection = connection
        self.max_message_bytes = max_message_bytes
        self.end_hangs_up = end_hangs_up
        """Every ``end`` hangs up the call, not only one whose handoffData asks for it."""
        self.jobs = SpeechJobs(call, self.report_error)
        self.replies = TextReplies(self.jobs, self.report_error)
        self.plays = PlayLoader(http, max_bytes=play_max_bytes, budget=play_budget,
                                report_error=self.report_error)
        self.stopping = False
        """``stop`` has begun: the agent leaving is no longer news."""
        self.ended = False
        """The session is over (``end``, or the agent left): the call's stream is being closed."""
        self.in_call_end = False
        """The reader is inside ``call.end``; ``stop`` lets it finish rather than cut it."""
        self._reader: asyncio.Task[None] | None = None

    # ---- to the agent -----------------------------------------------------------------------------
    async def send(self, message: ToAgentMessage) -> None:
        await self.connection.send(message)

    async def report_error(self, description: str) -> None:
        log.info("to agent %s: error: %s", self.connection.url, description)
        await self.connection.send(Error(description=description))

    # ---- from the agent (the dispatcher's handler) -------------------------------------------------
    def start_reading(self, name: str) -> None:
        """Start the one reader task (owned here, cancelled by ``stop``)."""
        self._reader = asyncio.create_task(self._read(), name=name)

    async def _read(self) -> None:
        reason = "agent disconnected"
        try:
            async with contextlib.aclosing(self.connection.frames()) as frames:
                async for frame in frames:
                    if not await dispatch_frame(frame, self, max_bytes=self.max_message_bytes):
                        return
        except Exception:  # a bug: logged with its traceback, and the call is ended, not left mute
            log.exception("relay reader for %s failed", self.connection.url)
            reason = "agent relay failed"
        if not self.stopping and not self.ended:
            log.info("agent %s disconnected (close code %s)", self.connection.url,
                     self.connection.close_code)
            # What the agent sent before it left is still spoken: it cannot be told otherwise.
            await self.replies.close()
            self.ended = True
            await self.jobs.wait(DISCONNECT_GRACE_S)
            await self.end_call(reason)

    async def on_text(self, message: Text) -> None:
        await self.replies.on_text(message)

    async def on_play(self, message: Play) -> None:
        await self.replies.close()
        source = message.source
        if not await self.jobs.room_for(f"play {source}"):
            return
        request = self.plays.request(message)

        async def settle(result: SpeechResult) -> None:
            await report_failure(self.report_error, result, f"play {source}")

        self.jobs.start(request.prepare, text=f"play {source}", settle=settle,
                        cleanup=request.release)

    async def on_end(self, message: End) -> None:
        """Finish what is queued, then close the call's stream (or hang up), then the socket."""
        await self.replies.close()
        self.ended = True
        await self.jobs.wait()
        handoff = message.handoff_data or ""
        await self.end_call(f"agent ended: {handoff}" if handoff else "agent ended",
                            hangup=self.end_hangs_up or asks_for_hangup(handoff))
        await self.connection.close()

    # ---- from the call ----------------------------------------------------------------------------
    async def new_exchange(self) -> None:
        """A caller event (``prompt``/``dtmf``) starts a new exchange."""
        await self.replies.new_exchange()

    async def end_call(self, reason: str, *, hangup: bool = False) -> None:
        """Close the call's stream; with ``hangup``, end the phone call and tell the agent if that
        could not be done."""
        self.ended = True
        self.in_call_end = True  # until the agent has been told how it went (see stop)
        try:
            if not hangup:
                await self.call.end(reason)
                return
            result = await self.call.end(reason, hangup=True)
            if result.error:
                await self.report_error(f"end: the call was not hung up: {result.error}")
        finally:
            self.in_call_end = False

    async def stop(self) -> None:
        """The call ended: cancel the reader and the speech jobs (not the task calling this, which
        may be one of them), then close the socket; every wait is bounded."""
        self.stopping = True
        current = asyncio.current_task()
        reader = self._reader
        if self.in_call_end and reader is not None and reader is not current and not reader.done():
            # the reader is closing the call's stream for us: let it finish rather than cut it
            await asyncio.wait([reader], timeout=END_GRACE_S)
        tasks = [t for t in (reader, *self.jobs.tasks()) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        self.jobs.forget()
        self.replies.current = None
        await self.connection.close()


def asks_for_hangup(handoff_data: str) -> bool:
    """Whether an ``end``'s handoffData asks to hang up: a JSON object with ``"hangup": true``
    (or ``"true"``). Any other handoffData keeps ConversationRelay's meaning of ``end``: the stream
    closes and Twilio continues with the next TwiML verb (an action URL receives the handoffData)."""
    try:
        data = json.loads(handoff_data)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    value = data.get("hangup")
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")
