"""Stateful anti-aliased resampling for streamed audio.

Engines hand us audio in arbitrary chunks. Resampling each chunk on its own restarts the sinc
filter at every seam (measured 33-39 dB SNR against one-shot resampling: audible clicks), so one
``soxr`` stream lives for a whole utterance and is flushed only at its end, when the ~tens of ms the
filter still holds are released instead of being lost.
"""

from __future__ import annotations

import numpy as np
import soxr

from tts_core.audio.arrays import FloatAudio


class StreamResampler:
    """One utterance's resampler: ``process`` chunks in order, then ``flush`` once.

    ``quality`` is a soxr recipe ("HQ" = 20-bit, steep band edge at ~91% of Nyquist), chosen
    because it keeps 300-3400 Hz flat and pushes 4-10 kHz images below -60 dB at a fraction of
    VHQ's cost.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.quality = quality
        self._passthrough = in_rate == out_rate
        self._stream = None if self._passthrough else self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream:
        return soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32",
                                   quality=self.quality)

    def process(self, chunk: FloatAudio) -> FloatAudio:
        """Resample the next chunk; may return fewer (even zero) samples while the filter fills."""
        chunk = np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1)
        if self._stream is None:
            return chunk.copy()
        return self._stream.resample_chunk(chunk, last=False)

    def flush(self) -> FloatAudio:
        """Release what the filter still holds and make the resampler ready for a new utterance."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream = self._new_stream()
        return tail

    def reset(self) -> None:
        """Drop all held audio (barge-in): the next chunk starts a fresh utterance."""
        if self._stream is not None:
            self._stream = self._new_stream()
