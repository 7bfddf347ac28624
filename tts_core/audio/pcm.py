"""Linear PCM sample bytes (as the ``wave`` module reads them) to float32."""

from __future__ import annotations

import numpy as np

from tts_core.audio.arrays import FloatAudio


def pcm_to_float32(raw: bytes, width: int, channels: int) -> FloatAudio:
    """Little-endian PCM of 8 (unsigned), 16, 24 or 32 bits -> float32 of shape (frames, channels)
    in [-1, 1). A trailing partial frame is dropped. Raises ValueError for other widths."""
    frame_bytes = width * channels
    raw = raw[: len(raw) - len(raw) % frame_bytes] if frame_bytes else b""
    if width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        packed = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((packed.shape[0], 4), dtype=np.uint8)
        padded[:, 1:] = packed  # little-endian: the 24 bits become the high bytes of an int32
        samples = (padded.view("<i4").reshape(-1) >> 8).astype(np.float32) / 8388608.0
    elif width == 4:
        samples = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:
        raise ValueError(f"unsupported PCM sample width: {8 * width} bits")
    return samples.reshape(-1, channels)
