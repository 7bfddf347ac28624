"""Caller audio: 8 kHz μ-law from Twilio -> linear PCM for voice activity detection and agents."""

from __future__ import annotations

import numpy as np

from tts_core.audio.mulaw import TELEPHONY_RATE, mulaw_to_pcm16


class MulawDecoder:
    """Decodes inbound μ-law payloads; stateless today, a class so callers can keep one per call."""

    sample_rate = TELEPHONY_RATE

    def to_pcm16(self, payload: bytes) -> np.ndarray:
        """int16 samples (what WebRTC VAD and most ASR services take)."""
        return mulaw_to_pcm16(payload)

    def to_float32(self, payload: bytes) -> np.ndarray:
        """float32 samples in [-1, 1) (what neural VADs and numpy DSP take)."""
        return mulaw_to_pcm16(payload).astype(np.float32) / 32768.0
