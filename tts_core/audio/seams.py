"""Joining a model's streamed chunks into one continuous signal: no dip, no click at the seams.

Chunked vocoders re-render each chunk on its own, so two things go wrong at a seam:

* **a fade-in per chunk.** The Chatterbox streaming fork multiplies the first 20 ms of every chunk by
  a linear 0 -> 1 ramp "to smooth boundaries". In the middle of a word that is a 20 ms dip in level,
  every chunk (a flutter at the chunk rate). Where the model lets us, we ask for no fade; where it
  fades anyway, ``SeamJoiner`` divides the known ramp back out. The first ~1 ms, where the ramp is
  so small that dividing would amplify noise (the fork watermarks after fading), is bridged with a
  straight line from where the previous chunk was heading to the first recovered sample.
* **a step.** The new chunk's first sample does not continue the previous chunk's last one (the
  vocoder saw different context), which is a click. We predict the next sample from the previous
  chunk's last two (linear extrapolation, exact to well under 1 % for speech frequencies at 24 kHz)
  and add the difference to the new chunk, decaying to zero with a raised cosine over ``smooth_ms``,
  or longer (up to ``max_smooth_ms``) where that would be steeper than the signal just before the
  seam. The correction is an offset, never a gain.

Without overlapping audio from the model nothing can make a large phase jump inaudible; what this
guarantees is no sample-level step (a click) and no fade-shaped dip.

The first chunk of an utterance is passed through untouched: its fade-in starts the utterance from
silence, which is what we want.
"""

from __future__ import annotations

import numpy as np

from tts_core.audio.arrays import FloatAudio


class SeamJoiner:
    """One utterance's chunk joiner: feed chunks in order to ``join``."""

    def __init__(
        self,
        sample_rate: int,
        *,
        fade_in_s: float = 0.0,
        smooth_ms: float = 2.0,
        max_smooth_ms: float = 10.0,
        min_ramp: float = 0.05,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        # The fork computes int(fade_duration * sr) samples and np.linspace(0, 1, n): mirror it exactly.
        self.fade_samples = int(fade_in_s * sample_rate)
        self.smooth_samples = max(1, int(smooth_ms * sample_rate / 1000))
        self.min_ramp = min_ramp
        self.max_smooth_samples = max(self.smooth_samples, int(max_smooth_ms * sample_rate / 1000))
        self.slope_window = max(2, int(0.005 * sample_rate))
        self._tail: FloatAudio | None = None  # last two samples of the previous chunk
        self._slope = 0.0  # steepest sample step in the previous chunk's last 5 ms
        self.seams = 0

    def join(self, chunk: FloatAudio) -> FloatAudio:
        """The chunk, corrected so that it continues the previous one (a new float32 array)."""
        out = np.array(chunk, dtype=np.float32, copy=True).reshape(-1)
        if out.size == 0:
            return out
        if self._tail is None:
            self._remember(out)
            return out
        self.seams += 1
        prev = self._tail
        predicted = 2.0 * prev[-1] - prev[-2] if prev.size > 1 else prev[-1]
        if self.fade_samples:
            n = min(self.fade_samples, out.size)
            ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
            lost = int(np.count_nonzero(ramp < self.min_ramp))
            out[lost:n] /= ramp[lost:n]
            if lost and lost < out.size:
                # Too faded to divide back without amplifying noise: bridge it with a straight line
                # from where the previous chunk was heading to the first recovered sample.
                out[:lost] = predicted + (out[lost] - predicted) * np.arange(lost) / lost
        step = float(predicted - out[0])
        # Long enough that the correction is never steeper than the signal was just before the seam.
        needed = int(np.ceil(abs(step) * np.pi / (2.0 * self._slope))) if self._slope > 0 else 0
        m = min(max(self.smooth_samples, min(needed, self.max_smooth_samples)), out.size)
        weights = 0.5 * (1.0 + np.cos(np.pi * np.arange(m, dtype=np.float32) / m))
        out[:m] += step * weights
        self._remember(out)
        return out

    def _remember(self, out: FloatAudio) -> None:
        if out.size > 1:
            self._slope = float(np.max(np.abs(np.diff(out[-self.slope_window:]))))
        if self._tail is not None and out.size < 2:
            self._tail = np.concatenate([self._tail, out])[-2:]
        else:
            self._tail = out[-2:].copy()


__all__ = ["SeamJoiner"]
