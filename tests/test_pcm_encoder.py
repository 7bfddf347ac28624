"""``Pcm16Encoder``: engine float32 at any rate -> 16-bit LE pcm at 24 kHz (the /v1 pcm contract).

Chunking must not change the audio (one resampler for the whole response), the length must be
the source's duration at the new rate (the flush releases the filter's tail), and samples are
scaled and clipped like the μ-law path.
"""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from tts_core.audio import Pcm16Encoder
from tts_core.engines.synthetic import speechlike


def decode(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0


def random_chunks(audio: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, audio.size), size=40, replace=False))
    return np.split(audio, cuts)


@pytest.mark.parametrize("rate", [16000, 22050, 44100])
def test_streamed_equals_one_shot_and_keeps_the_duration(rate: int) -> None:
    audio = speechlike(1.3, rate, seed=rate)
    encoder = Pcm16Encoder(rate, 24000)
    streamed = b"".join(encoder.push(c) for c in random_chunks(audio, seed=1)) + encoder.flush()
    one_shot = soxr.resample(audio, rate, 24000, quality="HQ")
    out = decode(streamed)
    assert abs(out.size - round(audio.size * 24000 / rate)) <= 1
    n = min(out.size, one_shot.size)
    noise = out[:n] - one_shot[:n]
    snr = 10 * np.log10(np.sum(one_shot[:n] ** 2) / np.sum(noise**2))
    assert snr > 80  # int16 quantisation (~90 dB here), nothing else: no seams
    assert encoder.samples_out == out.size


def test_24khz_passes_through_scaled_to_int16() -> None:
    encoder = Pcm16Encoder(24000, 24000)
    data = encoder.push(np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0], dtype=np.float32))
    assert data + encoder.flush() == np.array([0, 16384, -16384, 32767, -32768, 32767], "<i2").tobytes()


def test_broken_samples_do_not_poison_the_stream() -> None:
    encoder = Pcm16Encoder(22050, 24000)
    audio = speechlike(0.5, 22050, seed=3)
    audio[1000] = np.nan
    out = decode(encoder.push(audio) + encoder.flush())
    assert np.isfinite(out).all()
    # One bad sample costs one sample of silence, not a filter-length hole around it.
    assert np.sqrt(np.mean(out[900:1300] ** 2)) > 0.05
