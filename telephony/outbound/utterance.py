"""One thing to say, from submission until played, interrupted, failed or cancelled.

The record every part of the outbound pipeline shares: the queue decides when it plays, the renderer
fills in its text and timings, the pacer counts its frames and marks. It also answers what the
caller heard of it, from its segments and how many frames played.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from telephony.agents.base import SpeechOutcome, SpeechResult
from tts_core.audio.telephony_format import FRAME_MS

CHARS_PER_S = 14.0
"""Speech rate assumed for a segment whose audio is not complete yet (to estimate its length)."""


@dataclass(frozen=True)
class AudioClip:
    """Recorded audio to play as an utterance (the agent's ``play``), at its own sample rate."""

    audio: np.ndarray
    sample_rate: int
    label: str
    loops: int = 1
    """Times ``audio`` is played back to back: the same buffer again, never a copy."""


SpeechSource = str | AsyncIterator[str] | AudioClip
"""Whole text, streamed text tokens, or a clip."""


@dataclass(slots=True)
class SegmentSpan:
    """Where one text segment's audio lies in its utterance, in frames; ``end`` is None while it
    is still being rendered."""

    text: str
    start: int
    end: int | None = None


@dataclass(eq=False)
class Utterance:
    """One thing to say: its source, its place (generation), its segments and its counters."""

    id: int
    generation: int
    source: SpeechSource
    interruptible: bool
    preemptible: bool
    future: asyncio.Future[SpeechResult]
    created_at: float = field(default_factory=time.monotonic)
    text: str = ""
    segments: list[SegmentSpan] = field(default_factory=list)
    frames_queued: int = 0
    frames_sent: int = 0
    frames_confirmed: int = 0
    first_frame_at: float | None = None
    engine_first_chunk_ms: float | None = None
    first_segment_at: float | None = None
    """When the first segment's text was complete and went to the engine (streamed text waits for
    a speakable phrase; that wait belongs to the agent's token pace, not to the bridge)."""
    underruns: int = 0
    underrun_ms: float = 0.0
    end_mark_sent_at: float | None = None
    mark_rtt_ms: float | None = None
    from_cache: bool = False

    @property
    def label(self) -> str:
        if isinstance(self.source, AudioClip):
            return self.source.label
        return self.text

    def segment_started(self, text: str) -> None:
        """A segment's audio starts after everything queued so far."""
        self.segments.append(SegmentSpan(text, self.frames_queued))

    def segment_ended(self, index: int) -> None:
        """Segment ``index``'s audio ends after everything queued so far."""
        self.segments[index].end = self.frames_queued

    def confirm_segment(self, index: int) -> None:
        """Twilio echoed the mark after segment ``index``: its audio has been played."""
        if index < len(self.segments):
            end = self.segments[index].end
            if end is not None:
                self.frames_confirmed = max(self.frames_confirmed, end)

    def heard(self, played_frames: int) -> str:
        """The text up to ``played_frames``: whole segments, then words of the partly played one.

        A segment still being rendered has no known end yet; its length is estimated from its text
        (about 14 characters per second of speech) or from what was rendered so far, if longer.
        """
        if isinstance(self.source, AudioClip):
            return ""
        words: list[str] = []
        for span in self.segments:
            end = span.end
            if end is None:
                estimate = round(len(span.text) / CHARS_PER_S * 1000 / FRAME_MS)
                end = max(self.frames_queued, span.start + estimate)
            if played_frames >= end:
                words.append(span.text)
                continue
            if played_frames > span.start:
                part = span.text.split()
                words.extend(part[: int(len(part) * (played_frames - span.start) / max(1, end - span.start))])
            break
        return " ".join(words)

    def resolve(self, outcome: SpeechOutcome, *, played_frames: int = 0, error: str | None = None,
                heard: str | None = None) -> None:
        """Settle the agent's result once (later calls are no-ops: the first outcome stands)."""
        if self.future.done():
            return
        if heard is None:
            heard = self.text if outcome is SpeechOutcome.PLAYED else self.heard(played_frames)
        self.future.set_result(SpeechResult(
            text=self.label, outcome=outcome, heard_text=heard,
            played_ms=played_frames * FRAME_MS, error=error,
        ))
