"""Twilio's playback for the lean generator: the same model as twilio_playback.py, kept as counters.

``TwilioPlayback`` holds every frame in a deque and runs one task per call on a 20 ms sleep; at
hundreds of calls that is most of a generator core. Here the buffer is two counters (frames queued,
frames played) and the marks with the frame count they sit behind, and the 20 ms slots are played
by the generator's one shared ticker (``slot``). The rules are ``TwilioPlayback``'s, slot by slot:
marks at the head are reached without consuming the slot, then one frame plays (and the marks right
behind it are reached), or the slot is silence, which inside an utterance that already started
playing is an underrun; a mark ending in ``-end`` closes the utterance; ``clear`` drops what is
buffered and returns the pending marks (Twilio echoes them at once).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from telephony.testing.twilio_playback import END_MARK_SUFFIX, EmulatorStats, HeardUtterance
from tts_core.audio.telephony_format import FRAME_MS


class LeanListener(Protocol):
    def mark_reached(self, name: str, now: float) -> None: ...

    def underrun(self, utterance: HeardUtterance, now: float) -> None: ...


class LeanPlayback:
    """The buffer as counters; ``slot(now)`` plays one 20 ms slot."""

    __slots__ = (
        "_pending_starts",
        "_tail_end",
        "current",
        "listener",
        "marks",
        "played",
        "queued",
        "stats",
    )

    def __init__(self, stats: EmulatorStats, listener: LeanListener) -> None:
        self.stats = stats
        self.listener = listener
        self.queued = 0
        """Frames received since the start (the buffer's tail, as a frame count)."""
        self.played = 0
        """Frames played or dropped by ``clear`` (the buffer's head)."""
        self.marks: deque[tuple[int, str]] = deque()
        """Marks not reached yet: (frames queued before it, name), in order."""
        self.current: HeardUtterance | None = None
        self._pending_starts: deque[float] = deque()
        self._tail_end = False
        """The last thing queued is an end mark (a frame after it starts a new utterance)."""

    def idle(self) -> bool:
        """Nothing is playing or buffered."""
        return self.current is None and self.played == self.queued

    def media(self, now: float) -> None:
        if self.current is None:
            self._start_utterance(now)
        elif self._tail_end and self.marks:
            self._pending_starts.append(now)  # a new utterance queued behind the last one
        self._tail_end = False
        self.queued += 1

    def mark(self, name: str) -> None:
        self.marks.append((self.queued, name))
        self._tail_end = name.endswith(END_MARK_SUFFIX)

    def clear(self, now: float) -> list[str]:
        pending = [name for _, name in self.marks]
        self.marks.clear()
        self.played = self.queued
        self._pending_starts.clear()
        self._tail_end = False
        if self.current is not None:
            self.current.outcome = "cleared"
            self.current.ended = now
            self.current = None
        return pending

    def slot(self, now: float) -> None:
        marks = self.marks
        if marks and marks[0][0] <= self.played:
            self._reach_marks(now)
        current = self.current
        if self.played < self.queued:
            self.played += 1
            if current is not None:
                if current.started_playing is None:
                    current.started_playing = now
                current.frames += 1
            if marks and marks[0][0] <= self.played:
                self._reach_marks(now)
        elif current is not None and current.started_playing is not None:
            current.underrun_ms += FRAME_MS
            if not current.in_gap:
                current.underruns += 1
                current.in_gap = True
            self.listener.underrun(current, now)

    def _reach_marks(self, now: float) -> None:
        marks = self.marks
        while marks and marks[0][0] <= self.played:
            _, name = marks.popleft()
            current = self.current
            if current is not None:
                current.in_gap = False
                if name.endswith(END_MARK_SUFFIX):
                    current.outcome = "played"
                    current.ended = now
                    self.current = None
                    if self.played < self.queued:  # the next utterance was buffered behind it
                        self._start_utterance(self._pending_starts.popleft()
                                              if self._pending_starts else now)
            self.listener.mark_reached(name, now)

    def _start_utterance(self, received: float) -> None:
        self.current = HeardUtterance(first_frame_received=received)
        self.stats.utterances.append(self.current)
