"""The renderer's side of a call: one utterance at a time from the queue, through the renderer,
into the pacer.

Each utterance renders in a task of its own, so a cut can cancel exactly that rendering (its engine
stream and phrase-cache following close at once) while the loop goes on to whatever the cut kept.
A rendering that fails is reported: what it already queued still plays, its end mark follows, and
the utterance resolves ``FAILED`` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing

from telephony.agents.base import SpeechOutcome
from telephony.outbound.pacer import Pacer
from telephony.outbound.renderer import Renderer
from telephony.outbound.speech_queue import SpeechQueue
from telephony.outbound.utterance import Utterance
from tts_core.engines.base import EngineError

log = logging.getLogger(__name__)


class RenderLoop:
    """Takes utterances from ``queue`` in order and renders each into ``pacer``."""

    def __init__(self, queue: SpeechQueue, renderer: Renderer, pacer: Pacer,
                 report_error: Callable[[str], None]) -> None:
        self._queue = queue
        self._renderer = renderer
        self._pacer = pacer
        self._report_error = report_error
        self.current: asyncio.Task[None] | None = None
        """The rendering in progress, if any (owned: a cut or ``aclose`` cancels it)."""

    def cancel_current(self) -> None:
        if self.current is not None:
            self.current.cancel()

    async def run(self) -> None:
        while True:
            utt = await self._queue.next()
            self.current = asyncio.create_task(self._render(utt), name=f"render-u{utt.id}")
            try:
                await asyncio.wait([self.current])
            finally:
                if not self.current.done():
                    self.current.cancel()
            task, self.current = self.current, None
            if not task.cancelled() and task.exception() is not None:
                self._failed(utt, task.exception())
            # cancelled: interrupted, and the cut already resolved it and reset the encoder

    async def _render(self, utt: Utterance) -> None:
        async with aclosing(self._renderer.items(utt)) as items:
            async for item in items:
                await self._pacer.take(utt, item)
        await self._pacer.end_utterance(utt)

    def _failed(self, utt: Utterance, exc: BaseException | None) -> None:
        """What was already queued still plays; the rest of the text is reported failed."""
        if isinstance(exc, EngineError):
            message, kind = str(exc), "engine"
        else:
            message, kind = f"internal error: {exc!r}", "internal"
            log.error("rendering utterance %d failed", utt.id, exc_info=exc)
        self._report_error(kind)
        self._renderer.reset()
        self._pacer.end_utterance_now(utt)
        utt.resolve(SpeechOutcome.FAILED, played_frames=utt.frames_sent, error=message)
