"""The agent's ``text`` messages become speech: whole sentences, or one streamed reply per turn.

A streamed reply (``text`` tokens with ``last: false``) becomes one ``call.say`` over an async
iterator fed from a queue; ``last: true`` closes it. A whole sentence in one ``last: true`` message
is said as a plain string, so the call side's phrase cache can serve it.

Why the discarding state: when the call side cuts a streamed reply (barge-in, failure), tokens
still arriving for it belong to words the caller already talked over. They are dropped until the
agent ends the turn or a new caller event (``prompt``/``dtmf``) starts a new exchange, and the
agent gets one ``error`` quoting what was not spoken: nothing it sends is lost silently. A reply
longer than ``MAX_TURN_CHARS``, or one that finds no room among the call's speech jobs, is refused
once and its rest dropped the same way (never spoken in pieces).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from telephony.agents.base import SpeechOutcome, SpeechResult
from telephony.agents.relay.speech_jobs import (
    SNIPPET_CHARS,
    ReportError,
    SpeechJobs,
    ready,
    report_failure,
    snippet,
)
from telephony.relay_protocol import Text

MAX_TURN_CHARS = 20_000
"""A streamed reply longer than this is cut there, and the agent is told."""
DISCARDED_QUOTE_CHARS = 4 * SNIPPET_CHARS
"""Of a discarded tail, only this much is kept: enough to quote back, bounded whatever streams."""


@dataclass(eq=False)
class StreamedReply:
    """One streamed reply: tokens in, one ``call.say`` out."""

    tokens: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    """What the ``say`` reads; None ends it. Bounded by ``MAX_TURN_CHARS`` of text in all."""
    text: list[str] = field(default_factory=list)
    """Every token queued, to quote the reply if its speech fails."""
    chars: int = 0
    discarding: bool = False
    """The call side cut this reply (or it was refused): drop its remaining tokens."""
    discarded: list[str] = field(default_factory=list)
    """The start of what was discarded after an interruption (enough to quote back)."""
    refused: bool = False
    """Already reported (too long, or no room): the rest is dropped without another report."""


async def token_stream(tokens: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    """The queue's tokens until its None: what ``call.say`` speaks for a streamed reply."""
    while True:
        token = await tokens.get()
        if token is None:
            return
        yield token


class TextReplies:
    """The reply the agent is streaming (``current``), if any, and how each ``text`` lands."""

    def __init__(self, jobs: SpeechJobs, report_error: ReportError) -> None:
        self._jobs = jobs
        self._report_error = report_error
        self.current: StreamedReply | None = None

    async def on_text(self, message: Text) -> None:
        """Speak, queue or drop one ``text`` message (see the module's docstring)."""
        reply = self.current
        if reply is None:
            await self._begin(message)
        elif reply.discarding:
            await self._discard(reply, message)
        else:
            await self._continue(reply, message)

    async def _begin(self, message: Text) -> None:
        token = message.token
        interruptible, preemptible = message.interruptible, message.preemptible
        if message.last:  # a whole reply in one message: a plain string the phrase cache can serve
            if token.strip() and await self._jobs.room_for(token):

                async def settle_whole(result: SpeechResult) -> None:
                    await report_failure(self._report_error, result, token)

                self._jobs.start(
                    ready(lambda call: call.say(token, interruptible=interruptible,
                                                preemptible=preemptible)),
                    text=token, settle=settle_whole)
            return
        if not await self._jobs.room_for(token):
            # the rest of this reply is dropped with it (reported once), not spoken in pieces
            self.current = StreamedReply(discarding=True, refused=True)
            return
        reply = StreamedReply()
        self.current = reply
        self._queue(reply, token)

        async def settle_streamed(result: SpeechResult) -> None:
            await self._settle(reply, result)

        self._jobs.start(
            ready(lambda call: call.say(token_stream(reply.tokens), interruptible=interruptible,
                                        preemptible=preemptible)),
            text="", settle=settle_streamed)

    async def _continue(self, reply: StreamedReply, message: Text) -> None:
        if reply.chars + len(message.token) > MAX_TURN_CHARS:
            reply.discarding = reply.refused = True
            reply.tokens.put_nowait(None)
            await self._report_error(f"reply longer than {MAX_TURN_CHARS} characters: the rest is "
                                     "not spoken")
        else:
            self._queue(reply, message.token)
            if not message.last:
                return
            reply.tokens.put_nowait(None)
        if message.last:
            self.current = None

    async def _discard(self, reply: StreamedReply, message: Text) -> None:
        if not reply.refused and sum(map(len, reply.discarded)) < DISCARDED_QUOTE_CHARS:
            reply.discarded.append(message.token)
        if message.last:
            self.current = None
            await self._report_discarded(reply)

    @staticmethod
    def _queue(reply: StreamedReply, token: str) -> None:
        reply.text.append(token)
        reply.chars += len(token)
        reply.tokens.put_nowait(token)

    async def _settle(self, reply: StreamedReply, result: SpeechResult) -> None:
        """A streamed reply's speech ended: if it was cut while the agent is still streaming it,
        its tail is discarded from now on; a failure is reported."""
        if result.outcome is not SpeechOutcome.PLAYED and self.current is reply:
            reply.discarding = True
        await report_failure(self._report_error, result, "".join(reply.text))

    async def close(self) -> None:
        """A non-text message ends a streamed reply the agent left open."""
        reply, self.current = self.current, None
        if reply is None:
            return
        if reply.discarding:
            await self._report_discarded(reply)
        else:
            reply.tokens.put_nowait(None)

    async def new_exchange(self) -> None:
        """A caller event starts a new exchange: stop discarding a cut reply's tail."""
        if self.current is not None and self.current.discarding:
            reply, self.current = self.current, None
            await self._report_discarded(reply)

    async def _report_discarded(self, reply: StreamedReply) -> None:
        """Tokens of a reply the caller talked over are not spoken; say so rather than lose them."""
        text = "".join(reply.discarded).strip()
        reply.discarded.clear()
        if text and not reply.refused:
            await self._report_error(f"not spoken, the reply was interrupted: {snippet(text)!r}")
