"""A model of Twilio's playback buffer, so we send audio ahead of playback by a bounded lead.

Twilio plays what we send at exactly 8000 samples/s and buffers the rest. We cannot see that
buffer, so we model it: each 20 ms frame sent extends the buffer's end; the caller hears silence
whenever the modelled end falls behind the wall clock in the middle of an utterance (an underrun).

The lead (how far ahead of playback we keep the buffer) is the trade-off the issue asks us to make:
- large enough that 100 ms of network jitter, or an engine hiccup, never empties the buffer;
- small enough that audio the caller will never hear (after a barge-in) is not rendered, and that
  ``clear`` has little to discard. Barge-in itself does not wait on the lead: ``clear`` empties
  Twilio's buffer at once.
Default 240 ms (jitter 100 ms + one 60 ms pacing tick + 80 ms margin for a slow engine chunk); the
whole reply is never dumped at once (peers that bound their buffer at 2 s would drop the excess).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tts_core.audio.telephony_format import FRAME_S

__all__ = ["FRAME_S", "PlayoutClock"]


class PlayoutClock:
    """When the audio sent so far will have played, by Twilio's fixed playback rate."""

    def __init__(self, lead_ms: float = 240.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.lead_s = lead_ms / 1000.0
        self._clock = clock
        self._end = 0.0
        """Wall time at which the last frame sent will have been played."""

    def buffered_s(self) -> float:
        """Audio sent but (by our model) not yet played."""
        return max(0.0, self._end - self._clock())

    def room_frames(self) -> int:
        """Frames we may send now without exceeding the lead."""
        return max(0, int((self.lead_s - self.buffered_s()) / FRAME_S + 1e-9))

    def wait_s(self, tick_s: float = 0.060) -> float:
        """How long to sleep before there is room for about one tick of frames."""
        return max(0.0, self.buffered_s() - (self.lead_s - tick_s))

    def on_sent(self, frames: int, continuing: bool) -> float:
        """Account for ``frames`` sent now; returns the underrun gap in seconds (0 if none).

        ``continuing`` is False for the first frame of an utterance: silence before an utterance
        starts is a pause, not an underrun.
        """
        now = self._clock()
        gap = 0.0
        if self._end < now:
            if continuing:
                gap = now - self._end
            self._end = now
        self._end += frames * FRAME_S
        return gap

    def clear(self) -> None:
        """Twilio's buffer was emptied (we sent ``clear``)."""
        self._end = 0.0
