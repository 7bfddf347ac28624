"""Caller audio: 8 kHz μ-law from Twilio -> linear PCM for voice activity detection and agents."""

from __future__ import annotations

import numpy as np
import soxr

from tts_core.audio.arrays import FloatAudio, Pcm16Audio
from tts_core.audio.mulaw import TELEPHONY_RATE, mulaw_to_pcm16


class MulawDecoder:
    """Decodes inbound μ-law payloads; stateless today, a class so callers can keep one per call."""

    sample_rate = TELEPHONY_RATE

    def to_pcm16(self, payload: bytes) -> Pcm16Audio:
        """int16 samples (what WebRTC VAD and most ASR services take)."""
        return mulaw_to_pcm16(payload)

    def to_float32(self, payload: bytes) -> FloatAudio:
        """float32 samples in [-1, 1) (what neural VADs and numpy DSP take)."""
        return mulaw_to_pcm16(payload).astype(np.float32) / 32768.0


def to_recogniser_rate(pcm16: Pcm16Audio, rate: int = 16000) -> FloatAudio:
    """One caller turn (8 kHz int16) as float32 at a recogniser's rate (16 kHz for Whisper).

    One-shot per turn, so no filter state to carry between calls; soxr's default quality keeps
    the telephone band (up to 3.4 kHz) intact. ~0.1 ms per second of audio.
    """
    samples = np.asarray(pcm16, dtype=np.float32) / 32768.0
    if rate == TELEPHONY_RATE or samples.size == 0:
        return samples
    return soxr.resample(samples, TELEPHONY_RATE, rate).astype(np.float32, copy=False)
