"""Engine audio (any rate, float32) -> 8 kHz μ-law frames of exactly 160 bytes (20 ms).

The flow per utterance is push, push, ..., flush. Frames are released as soon as they are whole;
samples that do not fill a frame are carried to the next push, never padded. Only ``flush`` adds
silence, after fading out the last few ms so the utterance ends without a click.
"""

from __future__ import annotations

import numpy as np

from tts_core.audio.arrays import FloatAudio
from tts_core.audio.mulaw import float_to_pcm16, pcm16_to_mulaw
from tts_core.audio.resampler import StreamResampler
from tts_core.audio.telephony_format import FRAME_BYTES, FRAME_MS, FRAME_SAMPLES, TELEPHONY_RATE

__all__ = ["FRAME_BYTES", "FRAME_MS", "FRAME_SAMPLES", "MulawFrameEncoder"]


class MulawFrameEncoder:
    """Stateful encoder for one call's outbound audio.

    ``fade_ms`` of audio is held back (not yet encoded) so that ``flush`` can fade the true end of
    the utterance; that hold-back adds ``fade_ms`` (default 4 ms) of latency to the first frame only.
    """

    def __init__(self, source_rate: int, *, fade_ms: float = 4.0, quality: str = "HQ") -> None:
        self.source_rate = source_rate
        self._resampler = StreamResampler(source_rate, TELEPHONY_RATE, quality=quality)
        self._hold = max(0, round(TELEPHONY_RATE * fade_ms / 1000))
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_out = 0
        self.padded_samples = 0

    def push(self, chunk: FloatAudio) -> list[bytes]:
        """Add engine audio; return every whole frame now available (possibly none)."""
        if chunk.ndim != 1 and not (chunk.ndim == 2 and 1 in chunk.shape):
            raise ValueError(f"expected mono audio, got shape {chunk.shape}")
        if chunk.size and not np.isfinite(chunk).all():
            # One NaN or inf would poison a whole block of the resampler's filter (~70 ms of
            # silence around it); a broken sample becomes silence or full scale, nothing more.
            chunk = np.nan_to_num(chunk, nan=0.0, posinf=1.0, neginf=-1.0)
        out = self._resampler.process(chunk)
        if out.size:
            self._pending = np.concatenate((self._pending, out)) if self._pending.size else out
        ready = (self._pending.size - self._hold) // FRAME_SAMPLES * FRAME_SAMPLES
        if ready <= 0:
            return []
        return self._emit(ready)

    def flush(self) -> list[bytes]:
        """End the utterance: drain the resampler, fade out, pad the last frame with silence."""
        tail = self._resampler.flush()
        pending = np.concatenate((self._pending, tail)) if tail.size else self._pending
        if pending.size == 0:
            return []
        pending = pending.copy()
        fade = min(pending.size, max(self._hold, 1))
        pending[-fade:] *= np.linspace(1.0, 0.0, fade + 1, dtype=np.float32)[1:]
        pad = (-pending.size) % FRAME_SAMPLES
        self.padded_samples += pad
        self._pending = np.concatenate((pending, np.zeros(pad, dtype=np.float32)))
        return self._emit(self._pending.size)

    def reset(self) -> None:
        """Drop everything held (barge-in): nothing of the interrupted utterance can leak out."""
        self._resampler.reset()
        self._pending = np.zeros(0, dtype=np.float32)

    def _emit(self, n: int) -> list[bytes]:
        encoded = pcm16_to_mulaw(float_to_pcm16(self._pending[:n]))
        self._pending = self._pending[n:]
        frames = [encoded[i : i + FRAME_BYTES] for i in range(0, n, FRAME_BYTES)]
        self.frames_out += len(frames)
        return frames
