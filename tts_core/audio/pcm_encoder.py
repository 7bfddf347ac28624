"""Engine audio (any rate, float32) -> 16-bit little-endian mono PCM bytes at a fixed rate.

What an OpenAI-compatible ``response_format: "pcm"`` client expects (24 kHz whatever the engine's
native rate). One encoder lives for one whole response: its resampler keeps state across engine
chunks and text segments so the seams do not click, and ``flush`` releases the filter's tail.
"""

from __future__ import annotations

import numpy as np

from tts_core.audio.arrays import FloatAudio
from tts_core.audio.mulaw import float_to_pcm16
from tts_core.audio.resampler import StreamResampler


class Pcm16Encoder:
    """Stateful float32 -> int16 LE bytes at ``out_rate``: ``push`` chunks in order, ``flush`` once."""

    def __init__(self, source_rate: int, out_rate: int = 24000, *, quality: str = "HQ") -> None:
        self.source_rate = source_rate
        self.out_rate = out_rate
        self._resampler = StreamResampler(source_rate, out_rate, quality=quality)
        self.samples_out = 0

    def push(self, chunk: FloatAudio) -> bytes:
        """Add engine audio; return the PCM now available (possibly empty while the filter fills)."""
        if chunk.ndim != 1 and not (chunk.ndim == 2 and 1 in chunk.shape):
            raise ValueError(f"expected mono audio, got shape {chunk.shape}")
        if chunk.size and not np.isfinite(chunk).all():
            # One NaN would poison a block of the resampler's filter: a broken sample becomes
            # silence or full scale, nothing more (as in MulawFrameEncoder).
            chunk = np.nan_to_num(chunk, nan=0.0, posinf=1.0, neginf=-1.0)
        return self._encode(self._resampler.process(chunk))

    def flush(self) -> bytes:
        """End of the response: release what the resampler still holds."""
        return self._encode(self._resampler.flush())

    def _encode(self, samples: FloatAudio) -> bytes:
        self.samples_out += samples.size
        return float_to_pcm16(samples).astype("<i2", copy=False).tobytes() if samples.size else b""
