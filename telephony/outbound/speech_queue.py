"""The order utterances play in, and how speech is cut: generations, preemption, barge-in.

Utterances wait in ``pending`` until the renderer takes them; then they are ``active`` (rendering or
playing, oldest first: the first is what the caller hears) until resolved. A cut (barge-in,
preemption) bumps the ``generation``: everything of the old generation that is active is resolved
interrupted, pending utterances the cut spares move to the new generation (they had not started,
so they play after it), and audio or marks still tagged with the old generation are recognised as
stale by the pacer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from telephony.agents.base import SpeechOutcome, SpeechResult
from telephony.outbound.hooks import SpeakerHooks
from telephony.outbound.utterance import SpeechSource, Utterance

PlayedFrames = Callable[[Utterance], int]
"""How many frames of an (active) utterance the caller has heard, for its ``heard_text``."""


class SpeechQueue:
    """Pending and active utterances of one call, with its generation."""

    def __init__(self, hooks: SpeakerHooks, max_pending: int = 32) -> None:
        self.hooks = hooks
        self.max_pending = max_pending
        self.generation = 0
        self.closed = False
        """No new utterance is accepted (call ending)."""
        self.pending: deque[Utterance] = deque()
        """Submitted, not yet being rendered."""
        self.active: list[Utterance] = []
        """Being rendered or played, oldest first (the first one is what the caller hears)."""
        self.speaking_interruptibly = False
        """The caller is hearing (or about to hear) audio that barge-in may cut: kept up to date
        on every change of ``active`` (``_active_changed``) rather than worked out on each read,
        since the inbound path reads it for every caller frame (50 a second per call)."""
        self._by_id: dict[int, Utterance] = {}
        self._next_id = 0
        self._work = asyncio.Event()

    # ---- state ------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Something is queued, rendering or playing."""
        return bool(self.pending or self.active)

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_pending

    @property
    def preemptible_now(self) -> bool:
        """Everything still to come gives way to a new utterance (preemptible hold music, ...)."""
        current = self.active or list(self.pending)
        return bool(current) and all(u.preemptible for u in current)

    def get(self, utterance_id: int) -> Utterance | None:
        return self._by_id.get(utterance_id)

    def unresolved(self) -> list[asyncio.Future[SpeechResult]]:
        return [u.future for u in [*self.active, *self.pending]]

    # ---- flow -------------------------------------------------------------------------------
    def create(self, source: SpeechSource, *, interruptible: bool, preemptible: bool) -> Utterance:
        """A new utterance of the current generation (not queued yet: see ``append``)."""
        self._next_id += 1
        utt = Utterance(id=self._next_id, generation=self.generation, source=source,
                        interruptible=interruptible, preemptible=preemptible,
                        future=asyncio.get_running_loop().create_future())
        if isinstance(source, str):
            utt.text = source.strip()
        return utt

    def append(self, utt: Utterance) -> None:
        self.pending.append(utt)
        self._by_id[utt.id] = utt
        self._work.set()

    async def next(self) -> Utterance:
        """Wait for the next pending utterance; it becomes active (the renderer works on it)."""
        while not self.pending:
            self._work.clear()
            await self._work.wait()
        utt = self.pending.popleft()
        self.active.append(utt)
        self._active_changed()
        return utt

    def finish(self, utt: Utterance) -> None:
        """``utt`` is resolved: forget it and tell the call log."""
        if utt in self.active:
            self.active.remove(utt)
            self._active_changed()
        self._by_id.pop(utt.id, None)
        if self.hooks.on_finished:
            self.hooks.on_finished(utt)

    def _active_changed(self) -> None:
        active = self.active
        self.speaking_interruptibly = bool(active) and active[0].interruptible

    # ---- cutting ----------------------------------------------------------------------------
    def cut(self, played: PlayedFrames, keep: Callable[[Utterance], bool]) -> None:
        """Start a new generation: active utterances are interrupted (heard up to ``played``),
        pending ones for which ``keep`` is true survive and play after the cut."""
        self.generation += 1
        for utt in list(self.active):  # a copy: ``finish`` removes from ``active``
            utt.resolve(SpeechOutcome.INTERRUPTED, played_frames=played(utt))
            self.finish(utt)
        kept: deque[Utterance] = deque()
        for utt in self.pending:
            if keep(utt):
                utt.generation = self.generation  # not started yet: it plays after the cut
                kept.append(utt)
                continue
            utt.resolve(SpeechOutcome.INTERRUPTED, played_frames=0, heard="")
            self.finish(utt)
        self.active.clear()
        self._active_changed()
        self.pending = kept
        if kept:
            self._work.set()

    def drop_pending(self) -> None:
        """Winding down: what has not started is dropped (cancelled, nothing heard)."""
        for utt in self.pending:
            utt.resolve(SpeechOutcome.CANCELLED, played_frames=0, heard="")
            self.finish(utt)
        self.pending.clear()

    def resolve_all(self, outcome: SpeechOutcome, played: PlayedFrames, error: str | None = None) -> None:
        """End everything active and pending with ``outcome`` (hang-up, playback stopped)."""
        for utt in [*self.active, *self.pending]:
            utt.resolve(outcome, played_frames=played(utt), error=error)
            self.finish(utt)  # every utterance reaches the call log, cancelled ones too
        self.active.clear()
        self._active_changed()
        self.pending.clear()
