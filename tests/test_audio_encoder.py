"""Outbound audio: engine float32 at any rate -> 8 kHz μ-law frames of exactly 160 bytes.

Specification, checked here:
* chunking never changes the audio: streamed output equals one-shot resampling (>= 80 dB SNR);
* anti-aliasing: 4.5-10 kHz tones come out at least 60 dB below an in-band tone;
* the 300-3400 Hz telephone band is flat within +-0.5 dB;
* push() never inserts silence; only flush() pads, after fading the last few ms;
* the encoder is reusable after flush(), and reset() drops everything held.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import soxr

from tts_core.audio import (
    FRAME_BYTES,
    MULAW_SILENCE,
    MulawDecoder,
    MulawFrameEncoder,
    StreamResampler,
)
from tts_core.engines.synthetic import speechlike

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

OUT_RATE = 8000
SOURCE_RATES = (16000, 22050, 24000, 44100, 48000)
FADE_MS = 4.0
FADE_SAMPLES = round(OUT_RATE * FADE_MS / 1000)
SEEDS = (1, 2, 3)  # one random chunking per seed


# ---------------------------------------------------------------- helpers


def random_chunk_lengths(total: int, seed: int) -> list[int]:
    """Chunk lengths 1..5000 samples, with zero-length chunks sprinkled in, summing to ``total``."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    left = total
    while left > 0:
        if rng.random() < 0.15:
            lengths.append(0)
        n = min(left, int(rng.integers(1, 5001)))
        lengths.append(n)
        left -= n
    lengths.append(0)
    return lengths


def split(x: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    edges = np.cumsum([0, *lengths])
    return [x[a:b] for a, b in itertools.pairwise(edges)]


def encode(encoder: MulawFrameEncoder, chunks: list[np.ndarray]) -> tuple[list[bytes], list[bytes]]:
    """(frames returned by push, frames returned by flush)."""
    pushed = [frame for chunk in chunks for frame in encoder.push(chunk)]
    return pushed, encoder.flush()


def wire(encoder: MulawFrameEncoder, chunks: list[np.ndarray]) -> bytes:
    """Everything one utterance puts on the wire: push()* then flush()."""
    pushed, flushed = encode(encoder, chunks)
    return b"".join(pushed + flushed)


def quantise(y: np.ndarray) -> bytes:
    """Float -> int16 (round, clip) -> μ-law, written independently of tts_core.audio.mulaw."""
    pcm = np.clip(np.rint(y.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    return audioop.lin2ulaw(pcm.tobytes(), 2)


def decode(payload: bytes) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(payload, 2), dtype="<i2").astype(np.float64)


def one_shot(x: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(x, rate, OUT_RATE, quality="HQ")


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    noise = np.sum((np.asarray(test, dtype=np.float64) - reference) ** 2)
    return math.inf if noise == 0 else 10 * math.log10(np.sum(reference**2) / noise)


def tone(freq: float, rate: int, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    """Sine with 20 ms raised-cosine ramps, so the on/off transients stay out of the measurement."""
    n = int(seconds * rate)
    x = amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)
    ramp = int(0.02 * rate)
    window = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    x[:ramp] *= window
    x[-ramp:] *= window[::-1]
    return x.astype(np.float32)


STEADY = slice(int(0.1 * OUT_RATE), int(0.4 * OUT_RATE))  # skips the ramps and filter transients


def encode_tone(freq: float, rate: int) -> np.ndarray:
    """A tone through the encoder in 20 ms pushes: the decoded wire signal (int16 scale)."""
    x = tone(freq, rate)
    step = rate // 50
    pushed, flushed = encode(MulawFrameEncoder(rate), [x[i : i + step] for i in range(0, x.size, step)])
    return decode(b"".join(pushed + flushed))[STEADY] / 32768


def resample_tone(freq: float, rate: int) -> np.ndarray:
    """The same tone through StreamResampler alone: the filter, free of μ-law quantisation."""
    x = tone(freq, rate)
    step = rate // 50
    resampler = StreamResampler(rate, OUT_RATE, quality="HQ")
    parts = [resampler.process(x[i : i + step]) for i in range(0, x.size, step)]
    return np.concatenate([*parts, resampler.flush()])[STEADY].astype(np.float64)


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(y**2)))


def fitted_amplitude(y: np.ndarray, freq: float, start: int) -> float:
    """Least-squares amplitude of a ``freq`` sinusoid in ``y`` (samples ``start``.. at 8 kHz)."""
    t = (start + np.arange(y.size)) / OUT_RATE
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(a, b))


@pytest.fixture(scope="module")
def speech() -> dict[int, np.ndarray]:
    """5 s (plus a bit, so the length is not a whole number of frames) of speech-like audio."""
    return {rate: speechlike(5.0 + 0.0137, rate, seed=rate) for rate in SOURCE_RATES}


# ---------------------------------------------------------------- chunking invariance


@pytest.mark.parametrize("rate", SOURCE_RATES)
def test_stream_resampler_random_chunkings_match_one_shot_resampling_above_80_db(speech, rate):
    x = speech[rate]
    reference = one_shot(x, rate)
    assert abs(reference.size - x.size * OUT_RATE / rate) < 1
    for seed in SEEDS:
        resampler = StreamResampler(rate, OUT_RATE, quality="HQ")
        parts = [resampler.process(c) for c in split(x, random_chunk_lengths(x.size, seed))]
        streamed = np.concatenate([*parts, resampler.flush()])
        assert streamed.size == reference.size, f"seed {seed}: length differs from one-shot"
        assert snr_db(reference, streamed) >= 80, f"seed {seed}"


@pytest.mark.parametrize("rate", SOURCE_RATES)
def test_encoder_random_chunkings_match_one_shot_resampling_above_80_db(speech, rate):
    x = speech[rate]
    reference = one_shot(x, rate)
    expected = quantise(reference)
    body = reference.size - FADE_SAMPLES  # only the faded tail may differ
    for seed in SEEDS:
        out = wire(MulawFrameEncoder(rate), split(x, random_chunk_lengths(x.size, seed)))
        assert len(out) == math.ceil(reference.size / FRAME_BYTES) * FRAME_BYTES
        same = np.mean(np.frombuffer(out[:body], np.uint8) == np.frombuffer(expected[:body], np.uint8))
        assert same >= 0.999, f"seed {seed}: only {same:.4%} of bytes match the one-shot reference"
        assert snr_db(decode(expected[:body]), decode(out[:body])) >= 80, f"seed {seed}"


def test_8khz_input_is_passed_through_without_resampling():
    x = speechlike(1.0, OUT_RATE, seed=5)
    out = wire(MulawFrameEncoder(OUT_RATE), split(x, random_chunk_lengths(x.size, 9)))
    assert out[: x.size - FADE_SAMPLES] == quantise(x)[: x.size - FADE_SAMPLES]


# ---------------------------------------------------------------- frequency response

ALIAS_TONES_HZ = (4500, 5000, 6000, 8000, 10000)
ALIAS_CASES = [
    (rate, f)
    for rate in (16000, 22050, 24000, 48000)
    for f in ALIAS_TONES_HZ
    if f < rate / 2  # a tone at or above the source Nyquist cannot exist in the input
]


@pytest.mark.parametrize(("rate", "freq"), ALIAS_CASES)
def test_out_of_band_tones_alias_at_least_60_db_below_an_in_band_tone(rate, freq):
    # measured: -136 to -152 dB before μ-law; on the wire the residue rounds to exact silence
    for path in (resample_tone, encode_tone):
        in_band = rms(path(1000, rate))
        level_db = 20 * math.log10(max(rms(path(freq, rate)), 1e-12) / in_band)
        assert level_db <= -60, f"{path.__name__}: {freq} Hz at {rate} Hz aliases at {level_db:.1f} dB"


# not sub-multiples of 8 kHz: a 2 kHz tone would hit the same 4 μ-law codes forever and read +0.2 dB
PASSBAND_HZ = (300, 511, 1013, 1999, 2999, 3400)


@pytest.mark.parametrize("rate", SOURCE_RATES)
def test_telephone_band_300_to_3400_hz_is_flat_within_half_a_db(rate):
    # measured: within 0.006 dB before μ-law, within 0.05 dB on the wire
    for path in (resample_tone, encode_tone):
        gains = {
            f: 20 * math.log10(fitted_amplitude(path(f, rate), f, STEADY.start) / 0.5)
            for f in PASSBAND_HZ
        }
        assert all(abs(g) <= 0.5 for g in gains.values()), (path.__name__, gains)


# ---------------------------------------------------------------- framing and silence


@pytest.mark.parametrize("rate", (22050, 24000))
def test_push_never_inserts_silence_and_frames_are_exactly_160_bytes(speech, rate):
    x = speech[rate]
    encoder = MulawFrameEncoder(rate)
    pushed = []
    for chunk in split(x, random_chunk_lengths(x.size, 4)):
        pushed += encoder.push(chunk)
        assert encoder.padded_samples == 0
    assert pushed and all(len(f) == FRAME_BYTES for f in pushed)
    assert not any(f == bytes([MULAW_SILENCE]) * FRAME_BYTES for f in pushed)
    silent = np.frombuffer(b"".join(pushed), np.uint8) == MULAW_SILENCE
    edges = np.flatnonzero(np.diff(np.concatenate(([0], silent.astype(np.int8), [0]))))
    assert np.diff(edges)[::2].max(initial=0) <= 8, "a run of silence longer than 1 ms was pushed"
    flushed = encoder.flush()
    assert all(len(f) == FRAME_BYTES for f in flushed)

    expected_samples = one_shot(x, rate).size
    assert expected_samples % FRAME_BYTES  # the test audio must end in a partial frame
    total = len(pushed) + len(flushed)
    assert total == math.ceil(expected_samples / FRAME_BYTES) == encoder.frames_out
    assert encoder.padded_samples == total * FRAME_BYTES - expected_samples < FRAME_BYTES


@pytest.mark.parametrize("rate", (16000, 22050, 48000))
def test_push_releases_every_whole_frame_beyond_the_fade_holdback(speech, rate):
    """Latency: after each push, at most one partial frame plus the 4 ms fade hold-back is kept."""
    x = speech[rate][: rate * 2]
    encoder = MulawFrameEncoder(rate)
    shadow = StreamResampler(rate, OUT_RATE)
    available = released = 0
    for chunk in split(x, random_chunk_lengths(x.size, 5)):
        available += shadow.process(chunk).size
        released += len(encoder.push(chunk)) * FRAME_BYTES
        assert released == max(0, available - FADE_SAMPLES) // FRAME_BYTES * FRAME_BYTES


def test_flush_fades_the_tail_and_pads_with_mulaw_silence():
    rate, freq = 24000, 500
    n = rate // 2 + rate // (4 * freq)  # 0.5 s, ending on a crest of the tone
    x = (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
    reference = one_shot(x, rate)
    end = reference.size
    assert abs(reference[end - 1]) > 0.3  # unfaded, the last sample would step hard into silence

    encoder = MulawFrameEncoder(rate, fade_ms=FADE_MS)
    out = wire(encoder, split(x, [960] * (n // 960) + [n % 960]))
    y = decode(out)
    assert len(out) % FRAME_BYTES == 0 and len(out) - end == encoder.padded_samples > 0
    assert out[end:] == bytes([MULAW_SILENCE]) * encoder.padded_samples

    tail = y[end - FADE_SAMPLES : end]
    ramp = np.linspace(1.0, 0.0, FADE_SAMPLES + 1)[1:]
    unfaded = 32768 * reference[end - FADE_SAMPLES : end]
    np.testing.assert_allclose(tail, unfaded * ramp, atol=0.04 * 32768)  # μ-law step near full scale
    assert abs(y[end - 1]) <= 16
    body_step = np.abs(np.diff(y[: end - FADE_SAMPLES])).max()
    assert np.abs(np.diff(y[end - FADE_SAMPLES - 1 :])).max() <= 1.05 * body_step


def test_flush_with_nothing_pending_returns_no_frames():
    encoder = MulawFrameEncoder(24000)
    assert encoder.flush() == []
    assert encoder.push(np.zeros(0, dtype=np.float32)) == []
    assert encoder.flush() == []
    assert encoder.frames_out == encoder.padded_samples == 0


def test_encoder_is_reusable_for_a_second_utterance_after_flush(speech):
    rate = 22050
    first, second = speech[rate][:rate], speech[rate][rate : 3 * rate]
    encoder = MulawFrameEncoder(rate)
    a_push, a_flush = encode(encoder, split(first, random_chunk_lengths(first.size, 6)))
    b_push, b_flush = encode(encoder, split(second, random_chunk_lengths(second.size, 7)))
    fresh_push, fresh_flush = encode(MulawFrameEncoder(rate), [second])
    assert b"".join(b_push + b_flush) == b"".join(fresh_push + fresh_flush)
    assert encoder.frames_out == len(a_push + a_flush + b_push + b_flush)


def test_reset_drops_held_audio_and_the_next_utterance_starts_clean(speech):
    rate = 24000
    x = speech[rate]
    encoder = MulawFrameEncoder(rate)
    assert encoder.push(x[:rate]), "a second of audio releases frames"
    assert encoder.push(x[rate : rate + 100]) == []  # held: partial frame + fade hold-back
    encoder.reset()
    assert encoder.flush() == []

    encoder.push(x[:1234])
    encoder.reset()
    after_reset = wire(encoder, [x[2 * rate : 3 * rate]])
    fresh = wire(MulawFrameEncoder(rate), [x[2 * rate : 3 * rate]])
    assert after_reset == fresh


def test_push_accepts_column_vectors_and_rejects_multichannel_audio(speech):
    x = speech[24000][:4800]
    as_column = wire(MulawFrameEncoder(24000), [x.reshape(-1, 1)])
    assert as_column == wire(MulawFrameEncoder(24000), [x])
    with pytest.raises(ValueError, match="mono"):
        MulawFrameEncoder(24000).push(np.zeros((480, 2), dtype=np.float32))


def test_decoder_recovers_the_encoded_utterance(speech):
    rate = 24000
    x = speech[rate]
    pushed, flushed = encode(MulawFrameEncoder(rate), split(x, random_chunk_lengths(x.size, 8)))
    decoded = np.concatenate([MulawDecoder().to_float32(f) for f in pushed + flushed])
    reference = one_shot(x, rate)
    body = reference.size - FADE_SAMPLES
    assert snr_db(reference[:body], decoded[:body]) >= 33  # only μ-law quantisation noise is left


def test_a_nan_costs_one_sample_and_an_inf_no_more_than_a_click() -> None:
    rate = 22050
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    clean_encoder = MulawFrameEncoder(rate)
    clean = b"".join(clean_encoder.push(tone) + clean_encoder.flush())
    for bad, most_bytes in ((np.nan, 8), (np.inf, 48)):  # 48 bytes = 6 ms: the filter's ring
        dirty = tone.copy()
        dirty[1000] = bad
        encoder = MulawFrameEncoder(rate)
        out = b"".join(encoder.push(dirty) + encoder.flush())
        differing = sum(a != b for a, b in zip(clean, out, strict=True))
        assert differing <= most_bytes, (bad, differing)
