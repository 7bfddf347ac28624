"""Twilio's playback of a stream's outbound audio, as the emulator models it.

Twilio buffers the media frames a server sends and plays them at exactly one 160-byte frame per
20 ms; a mark is echoed back when playback reaches it; ``clear`` empties the buffer and echoes every
pending mark at once. This module holds that buffer and clock, and what the caller heard: one
``HeardUtterance`` per stretch of bot speech (an utterance ends at a mark named ``…-end``), with
its underruns (slots that found the buffer empty mid-utterance).

It is kept apart from the socket (twilio_emulator.py) so each has one job: the emulator parses and
validates messages and sends echoes; the playback decides when things are heard. Observers (the
emulator, the replay's bookkeeping) learn of playback events through ``PlaybackListener``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from tts_core.audio.telephony_format import FRAME_S, SILENCE_FRAME

END_MARK_SUFFIX = "-end"
"""The bridge names the mark after an utterance's last frame ``<id>-end``: the utterance boundary."""


def _is_end_mark(item: bytes | str) -> bool:
    return isinstance(item, str) and item.endswith(END_MARK_SUFFIX)


@dataclass
class HeardUtterance:
    """One stretch of bot speech as the caller heard it (times: ``time.monotonic``)."""

    first_frame_received: float
    started_playing: float | None = None
    ended: float | None = None
    frames: int = 0
    underruns: int = 0
    underrun_ms: float = 0.0
    outcome: str = "playing"  # played | cleared | playing
    in_gap: bool = field(default=False, repr=False)
    """Playback is starved right now: the next empty slot continues this underrun, not a new one."""


@dataclass
class EmulatorStats:
    """What the Twilio side saw of the bridge's messages and heard of its audio."""

    media_received: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears: int = 0
    invalid: list[str] = field(default_factory=list)
    utterances: list[HeardUtterance] = field(default_factory=list)
    clear_times: list[float] = field(default_factory=list)
    mark_names: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def underruns(self) -> int:
        return sum(u.underruns for u in self.utterances)

    @property
    def underrun_ms(self) -> float:
        return sum(u.underrun_ms for u in self.utterances)


class PlaybackListener(Protocol):
    """Told what playback does; ``mark_reached`` must echo the mark to the bridge."""

    def mark_reached(self, name: str) -> None: ...

    def playing(self, utterance: HeardUtterance, now: float) -> None: ...

    def underrun(self, utterance: HeardUtterance, now: float) -> None: ...

    def utterance_ended(self, utterance: HeardUtterance, now: float) -> None: ...


class TwilioPlayback:
    """The buffer of outbound frames and marks, played on a 20 ms clock (``run``)."""

    def __init__(self, stats: EmulatorStats, listener: PlaybackListener, *, keep_audio: bool) -> None:
        self.stats = stats
        self.listener = listener
        self.keep_audio = keep_audio
        self.heard = bytearray()
        """What the caller heard, 8 kHz μ-law, silence included (with ``keep_audio``)."""
        self.current: HeardUtterance | None = None
        self._buffer: deque[bytes | str] = deque()  # frames and mark names, in order
        self._pending_starts: deque[float] = deque()
        """Receive times of utterances queued behind an end mark that has not played yet."""

    def idle(self) -> bool:
        """Nothing is playing or buffered."""
        return self.current is None and not any(isinstance(item, bytes) for item in self._buffer)

    # ---- what the bridge sends --------------------------------------------------------------------
    def media(self, frame: bytes, now: float) -> None:
        if self.current is None:
            self._start_utterance(now)
        elif self._buffer and _is_end_mark(self._buffer[-1]):
            self._pending_starts.append(now)  # a new utterance queued behind the last one
        self._buffer.append(frame)

    def mark(self, name: str) -> None:
        self._buffer.append(name)

    def clear(self, now: float) -> list[str]:
        """Empty the buffer; returns the pending marks, which Twilio echoes at once."""
        pending = [item for item in self._buffer if isinstance(item, str)]
        self._buffer.clear()
        self._pending_starts.clear()
        if self.current is not None:
            self.current.outcome = "cleared"
            self.current.ended = now
            self.current = None
        return pending

    # ---- the clock ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Play one frame per 20 ms of wall clock, catching up after a late wake-up."""
        started = time.monotonic()
        played_slots = 0
        while True:
            due = int((time.monotonic() - started) / FRAME_S)
            while played_slots < due:
                played_slots += 1
                self.play_slot(time.monotonic())
            await asyncio.sleep(FRAME_S)

    def play_slot(self, now: float) -> None:
        """One 20 ms slot: marks at the head are reached without consuming it, then one frame
        plays (and the marks right behind it are reached), or the slot is silence."""
        self._reach_marks_at_head(now)
        if self._buffer:
            frame = self._buffer.popleft()
            assert isinstance(frame, bytes)
            current = self.current
            if current is not None:
                if current.started_playing is None:
                    current.started_playing = now
                    self.listener.playing(current, now)
                current.frames += 1
            if self.keep_audio:
                self.heard += frame
            self._reach_marks_at_head(now)
            return
        current = self.current
        if current is not None and current.started_playing is not None:
            current.underrun_ms += FRAME_S * 1000
            if not current.in_gap:
                current.underruns += 1
            current.in_gap = True
            self.listener.underrun(current, now)
        if self.keep_audio:
            self.heard += SILENCE_FRAME

    def _reach_marks_at_head(self, now: float) -> None:
        while self._buffer and isinstance(head := self._buffer[0], str):
            self._buffer.popleft()
            self._reach_mark(head, now)

    def _reach_mark(self, name: str, now: float) -> None:
        current = self.current
        if current is not None:
            current.in_gap = False
            if name.endswith(END_MARK_SUFFIX):
                current.outcome = "played"
                current.ended = now
                self.current = None
                self.listener.utterance_ended(current, now)
                if any(isinstance(item, bytes) for item in self._buffer):
                    # The next utterance's frames were already buffered behind this end mark.
                    self._start_utterance(self._pending_starts.popleft() if self._pending_starts else now)
        self.listener.mark_reached(name)

    def _start_utterance(self, received: float) -> None:
        self.current = HeardUtterance(first_frame_received=received)
        self.stats.utterances.append(self.current)
