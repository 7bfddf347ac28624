"""Decoding speech-API bodies however they are split: PCM, WAV, SSE, error shapes."""

from __future__ import annotations

import base64
import json
import random

import numpy as np
import pytest

from tests.speech_standin import ERROR_BODIES, tone_pcm, wav_header
from tts_core.engines.speech_response import (
    PcmDecoder,
    SpeechBodyError,
    SseAudioDecoder,
    describe_error_body,
    error_message,
)


def splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        size = rng.choice([1, 1, 2, 3, 5, 17, 160, 1001])
        out.append(data[pos : pos + size])
        pos += size
    return out


@pytest.mark.parametrize("seed", range(5))
def test_pcm_split_anywhere_decodes_to_the_same_samples(seed: int) -> None:
    pcm = tone_pcm(0.1)
    decoder = PcmDecoder()
    out = np.concatenate([decoder.feed(piece) for piece in splits(pcm, seed)])
    np.testing.assert_array_equal(out, np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)


@pytest.mark.parametrize("seed", range(3))
def test_a_wav_header_split_across_reads_is_skipped_and_its_rate_kept(seed: int) -> None:
    pcm = tone_pcm(0.05, 16000)
    decoder = PcmDecoder()
    out = np.concatenate([decoder.feed(piece) for piece in splits(wav_header(16000) + pcm, seed)])
    assert decoder.header_rate == 16000
    np.testing.assert_array_equal(out, np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)


def test_a_wav_that_is_not_16_bit_mono_is_refused() -> None:
    header = bytearray(wav_header(24000))
    header[22] = 2  # stereo
    with pytest.raises(SpeechBodyError, match="2 channel"):
        PcmDecoder().feed(bytes(header))


@pytest.mark.parametrize("seed", range(3))
def test_sse_audio_deltas_split_anywhere(seed: int) -> None:
    pcm = tone_pcm(0.05)
    events = b"".join(
        b"event: x\ndata: " + json.dumps({"type": "speech.audio.delta",
                                           "audio": base64.b64encode(pcm[i : i + 333]).decode()}
                                          ).encode() + b"\r\n\r\n"
        for i in range(0, len(pcm), 333)) + b'data: {"type": "speech.audio.done"}\n\n'
    decoder = SseAudioDecoder()
    out = b"".join(decoder.feed(piece) for piece in splits(events, seed))
    assert out == pcm and decoder.done


def test_an_sse_error_event_raises_with_its_message() -> None:
    with pytest.raises(SpeechBodyError, match="GPU out of memory"):
        SseAudioDecoder().feed(b'data: {"type": "error", "error": {"message": "GPU out of memory"}}\n\n')


@pytest.mark.parametrize("shape", sorted(ERROR_BODIES))
def test_error_messages_in_every_shape(shape: str) -> None:
    assert error_message(ERROR_BODIES[shape]) is not None
    assert "voice 'nope' is not available" in describe_error_body(json.dumps(ERROR_BODIES[shape]).encode())


def test_a_non_json_error_body_is_described_by_its_text() -> None:
    assert describe_error_body(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert describe_error_body(b"") == "empty body"
