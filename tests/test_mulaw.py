"""G.711 μ-law conversion: bit-exact with ``audioop`` and with an independent G.711 reference.

The reference below is written from the G.711 definition, not from ``audioop``: magnitude, clip,
bias, segment search, 4-bit mantissa, sign, invert all bits. G.711 μ-law codes 14-bit linear
samples; the 16-bit -> 14-bit step is an arithmetic shift (rounds toward minus infinity), which is
what ``audioop``, ffmpeg's pcm_mulaw and Asterisk all do, and what a receiving phone stack expects.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tts_core.audio import MULAW_SILENCE, MulawDecoder, mulaw_to_pcm16, pcm16_to_mulaw
from tts_core.audio.mulaw import float_to_pcm16
from tts_core.engines.synthetic import speechlike

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int64)
ALL_CODES = np.arange(256, dtype=np.uint8)

BIAS = 0x84
CLIP = 32635
SEGMENT_ENDS = (0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF)


def g711_encode(pcm16: np.ndarray, *, to_14_bits: bool = True) -> np.ndarray:
    """Pure-numpy G.711 μ-law encoder (16-bit linear in, one code byte per sample out)."""
    x = np.asarray(pcm16, dtype=np.int64)
    if to_14_bits:
        x = (x >> 2) << 2  # G.711 μ-law has 14-bit input resolution
    negative = x < 0
    magnitude = np.minimum(np.where(negative, -x, x), CLIP) + BIAS
    segment = np.zeros_like(magnitude)
    for end in SEGMENT_ENDS:
        segment += magnitude > end
    mantissa = (magnitude >> (segment + 3)) & 0x0F
    code = np.where(negative, 0x80, 0x00) | (segment << 4) | mantissa
    return (~code & 0xFF).astype(np.uint8)


def g711_decode(codes: np.ndarray) -> np.ndarray:
    """Pure-numpy G.711 μ-law decoder (code bytes in, 16-bit linear out)."""
    u = ~np.asarray(codes, dtype=np.int64) & 0xFF
    segment = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + BIAS) << segment
    return np.where(u & 0x80, BIAS - magnitude, magnitude - BIAS).astype(np.int16)


def as_codes(payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.uint8)


def test_encode_is_bit_exact_with_audioop_for_all_65536_int16_values():
    ours = as_codes(pcm16_to_mulaw(ALL_INT16.astype(np.int16)))
    theirs = as_codes(audioop.lin2ulaw(ALL_INT16.astype("<i2").tobytes(), 2))
    assert ours.size == 65536
    np.testing.assert_array_equal(ours, theirs)


def test_encode_is_bit_exact_with_independent_g711_reference_for_all_65536_int16_values():
    ours = as_codes(pcm16_to_mulaw(ALL_INT16.astype(np.int16)))
    np.testing.assert_array_equal(ours, g711_encode(ALL_INT16))


def test_encode_accepts_raw_little_endian_bytes_as_well_as_arrays():
    pcm = ALL_INT16.astype(np.int16)
    assert pcm16_to_mulaw(pcm.astype("<i2").tobytes()) == pcm16_to_mulaw(pcm)


def test_14_bit_reduction_rounds_negative_samples_toward_minus_infinity():
    """Why the reference shifts first: a sign-symmetric 16-bit formula disagrees on negatives only,
    by one code step, so a byte-exact reference has to model the 14-bit input explicitly."""
    symmetric = g711_encode(ALL_INT16, to_14_bits=False)
    exact = g711_encode(ALL_INT16)
    differs = symmetric != exact
    assert differs.any()
    assert (ALL_INT16[differs] < 0).all()
    step = np.abs(g711_decode(symmetric[differs]).astype(int) - g711_decode(exact[differs]))
    assert step.max() <= 1024  # one quantisation step of the loudest segment
    assert as_codes(pcm16_to_mulaw(np.array([-1], dtype=np.int16)))[0] == 0x7E


def test_decode_matches_audioop_and_g711_reference_for_all_256_codes():
    ours = mulaw_to_pcm16(ALL_CODES.tobytes())
    theirs = np.frombuffer(audioop.ulaw2lin(ALL_CODES.tobytes(), 2), dtype="<i2")
    assert ours.dtype == np.dtype("<i2") and ours.size == 256
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, g711_decode(ALL_CODES))


def test_silence_is_0xff_and_decodes_to_zero():
    assert MULAW_SILENCE == 0xFF
    assert pcm16_to_mulaw(np.zeros(160, dtype=np.int16)) == bytes([MULAW_SILENCE]) * 160
    assert mulaw_to_pcm16(bytes([MULAW_SILENCE]))[0] == 0


def test_float_to_pcm16_scales_by_32768_rounds_and_clips_instead_of_wrapping():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 3 / 32768, 0.49 / 32768], dtype=np.float32)
    np.testing.assert_array_equal(
        float_to_pcm16(x), np.array([0, 16384, -16384, 32767, -32768, 32767, -32768, 3, 0])
    )
    assert float_to_pcm16(x).dtype == np.int16


def test_decode_then_encode_returns_every_code_except_negative_zero():
    codes = ALL_CODES[ALL_CODES != 0x7F]
    again = as_codes(pcm16_to_mulaw(mulaw_to_pcm16(codes.tobytes())))
    np.testing.assert_array_equal(again, codes)
    # 0x7F is "negative zero": it decodes to 0, which encodes as the canonical silence 0xFF
    assert pcm16_to_mulaw(mulaw_to_pcm16(b"\x7f")) == b"\xff"


def test_round_trip_error_stays_within_half_a_quantisation_step():
    decoded = mulaw_to_pcm16(pcm16_to_mulaw(ALL_INT16.astype(np.int16))).astype(np.int64)
    error = np.abs(decoded - ALL_INT16)
    unclipped = np.abs(ALL_INT16) <= 32124  # largest μ-law magnitude
    # the 14-bit shift can raise a negative magnitude by up to 3, possibly into the next segment
    segment = np.searchsorted(SEGMENT_ENDS, np.abs(ALL_INT16) + BIAS + 3)
    half_step = 2 ** (2 + segment)
    positive = unclipped & (ALL_INT16 >= 0)
    negative = unclipped & (ALL_INT16 < 0)
    assert (error[positive] <= half_step[positive]).all()
    assert (error[negative] <= half_step[negative] + 3).all()


class TestMulawDecoder:
    def test_round_trip_of_speech_keeps_the_mulaw_snr(self):
        speech = float_to_pcm16(speechlike(1.0, 8000, seed=3))
        decoder = MulawDecoder()
        back = decoder.to_pcm16(pcm16_to_mulaw(speech))
        np.testing.assert_array_equal(back, mulaw_to_pcm16(pcm16_to_mulaw(speech)))
        error = back.astype(np.float64) - speech
        snr = 10 * np.log10(np.sum(speech.astype(np.float64) ** 2) / np.sum(error**2))
        assert 33 <= snr <= 45  # G.711 μ-law's ~38 dB on speech-level audio
        assert decoder.sample_rate == 8000

    def test_float32_view_is_pcm16_over_32768(self):
        decoder = MulawDecoder()
        payload = ALL_CODES.tobytes()
        as_float = decoder.to_float32(payload)
        assert as_float.dtype == np.float32
        np.testing.assert_array_equal(as_float * 32768.0, decoder.to_pcm16(payload).astype(np.float32))
        assert -1.0 <= as_float.min() and as_float.max() < 1.0

    @pytest.mark.parametrize("payload", [b"", b"\xff" * 160])
    def test_empty_and_silent_payloads(self, payload):
        decoded = MulawDecoder().to_pcm16(payload)
        assert decoded.size == len(payload)
        assert not decoded.any()
