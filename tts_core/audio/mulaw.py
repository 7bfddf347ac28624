"""G.711 μ-law conversion.

We delegate to ``audioop`` (stdlib up to 3.12, the ``audioop-lts`` backport from 3.13): it is the
reference G.711 implementation in C, so our bytes are bit-exact with what every telephony stack
expects, and it is faster than any numpy lookup we could write for 160-byte frames.
"""

from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

from tts_core.audio.arrays import FloatAudio, Pcm16Audio
from tts_core.audio.telephony_format import MULAW_SILENCE, TELEPHONY_RATE

__all__ = ["MULAW_SILENCE", "TELEPHONY_RATE", "float_to_pcm16", "mulaw_to_pcm16", "mulaw_to_pcm16_bytes",
           "pcm16_to_mulaw"]


def float_to_pcm16(samples: FloatAudio) -> Pcm16Audio:
    """Scale float audio in [-1, 1] to int16, clipping instead of wrapping on overload."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * 32768.0)
    pcm: Pcm16Audio = np.clip(scaled, -32768, 32767).astype(np.int16)
    return pcm


def pcm16_to_mulaw(pcm: Pcm16Audio | bytes) -> bytes:
    """Encode little-endian int16 samples as G.711 μ-law bytes (one byte per sample)."""
    data = pcm.astype("<i2", copy=False).tobytes() if isinstance(pcm, np.ndarray) else pcm
    return audioop.lin2ulaw(data, 2)


def mulaw_to_pcm16(payload: bytes) -> Pcm16Audio:
    """Decode G.711 μ-law bytes to int16 samples."""
    return np.frombuffer(audioop.ulaw2lin(payload, 2), dtype="<i2")


def mulaw_to_pcm16_bytes(payload: bytes) -> bytes:
    """Decode G.711 μ-law bytes to int16 samples as bytes (what WebRTC VAD takes): no numpy array,
    for the per-frame path that only hands them on."""
    return audioop.ulaw2lin(payload, 2)
