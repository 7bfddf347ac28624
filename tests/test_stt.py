"""The embedded recogniser (tts_core.stt): real human speech in telephone quality, pinned weights,
clear refusals. The model is loaded once per session (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from telephony.config import ConfigError, settings_from_env
from telephony.services import Bridge
from tests.conftest import speech_clip
from tts_core.audio import MulawDecoder
from tts_core.audio.inbound import to_recogniser_rate
from tts_core.engines.synthetic import SyntheticEngine
from tts_core.stt import Recogniser, RecogniserError, create_recogniser, whisper_local
from tts_core.stt.wer import normalise, word_errors


def telephone_clip(name: str) -> np.ndarray:
    return to_recogniser_rate(MulawDecoder().to_pcm16(speech_clip(name)))


@pytest.mark.slow
async def test_real_speech_over_the_phone_is_recognised(recogniser: Recogniser) -> None:
    transcript = await recogniser.transcribe(telephone_clip("go_forward_ten_meters"))
    assert normalise(transcript.text) == ["go", "forward", "ten", "meters"], transcript.text
    assert transcript.language == "en" and 2.5 < transcript.duration < 3.0
    assert transcript.decode_ms < 2000


@pytest.mark.slow
async def test_silence_and_noise_give_no_words(recogniser: Recogniser) -> None:
    noise = np.random.default_rng(3).normal(0, 0.02, 16000).astype(np.float32)
    for audio in (np.zeros(16000, np.float32), noise, np.zeros(0, np.float32)):
        assert (await recogniser.transcribe(audio)).text == ""


@pytest.mark.slow
async def test_concurrent_turns_are_served_earliest_deadline_first(
    recogniser: Recogniser, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = telephone_clip("he_was_not_an_ill_disposed_young_man")
    started: list[str] = []
    decode = recogniser._decode  # type: ignore[attr-defined]

    def recorded(samples: np.ndarray, language: str | None):  # type: ignore[no-untyped-def]
        started.append(names[samples.size])
        return decode(samples, language)

    monkeypatch.setattr(recogniser, "_decode", recorded)
    slots = whisper_local.default_concurrency()
    names = {audio.size - i: f"b{i}" for i in range(slots)}
    names[audio.size - slots] = "late"
    names[audio.size - slots - 1] = "urgent"
    now = time.monotonic()

    async def turn(name: str, deadline: float) -> None:
        size = next(k for k, v in names.items() if v == name)
        transcript = await recogniser.transcribe(audio[:size], deadline=deadline)
        assert word_errors("he was not an ill disposed young man", transcript.text)[0] <= 2

    # fill every slot, then queue a late (partial-like) decode before an urgent one
    blockers = [asyncio.create_task(turn(f"b{i}", now)) for i in range(slots)]
    await asyncio.sleep(0)
    late = asyncio.create_task(turn("late", now + 10))
    await asyncio.sleep(0)
    urgent = asyncio.create_task(turn("urgent", now + 1))
    await asyncio.gather(*blockers, late, urgent)
    assert started.index("urgent") < started.index("late"), started
    assert recogniser.busy == 0


def test_wer_normalisation_matches_styles() -> None:
    assert word_errors("and mister john dashwood had ten", "And Mr. John Dashwood had 10.") == (0, 6)
    assert word_errors("two nine three four zero", "29340") == (0, 5)
    assert word_errors("he was not an ill disposed young man", "He was not an ill-sposed young man.") \
        == (1, 8)


# ---- pinned weights and clear refusals -----------------------------------------------------------
def fake_model_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.bin").write_bytes(b"not the real weights")
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


async def test_weights_that_do_not_match_the_pinned_hash_are_refused_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = fake_model_dir(tmp_path)
    monkeypatch.setattr(whisper_local, "default_model_dir", lambda: directory)
    with pytest.raises(RecogniserError, match=rf"{directory / 'model.bin'}.*sha256"):
        await create_recogniser("local").load()
    # and the server does not start
    settings = settings_from_env({}, insecure_dev=True, engine="synthetic", stt="local")
    with pytest.raises(ConfigError, match=r"model\.bin"):
        await Bridge.start(settings, engine=SyntheticEngine())


def test_the_packaged_weights_match_the_pin() -> None:
    path = whisper_local.default_model_dir() / "model.bin"
    assert whisper_local.file_sha256(path) == whisper_local.DEFAULT_MODEL_SHA256


async def test_a_missing_model_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecogniserError, match="does not exist"):
        await create_recogniser("local", model=str(tmp_path / "nope")).load()
    with pytest.raises(RecogniserError, match=r"no model\.bin"):
        await create_recogniser("local", model=str(tmp_path)).load()


@pytest.mark.slow
async def test_remote_recognition_needs_a_url_and_starts_without_contacting_it() -> None:
    with pytest.raises(ConfigError, match="VOICE_BRIDGE_STT_URL"):
        settings_from_env({"VOICE_BRIDGE_STT": "openai"}, insecure_dev=True, engine="synthetic")
    settings = settings_from_env({"VOICE_BRIDGE_STT": "openai", "VOICE_BRIDGE_STT_URL": "http://127.0.0.1:9/v1"},
                                 insecure_dev=True, engine="synthetic")
    bridge = await Bridge.start(settings, engine=SyntheticEngine())  # nothing listens there: still starts
    try:
        assert bridge.recogniser is not None and bridge.recogniser.name == "openai"
    finally:
        await bridge.aclose()


def test_speculation_must_be_shorter_than_the_endpoint() -> None:
    with pytest.raises(ConfigError, match="stt_speculative_ms"):
        settings_from_env({"VOICE_BRIDGE_STT_ENDPOINT_MS": "400", "VOICE_BRIDGE_STT_SPECULATIVE_MS": "400"},
                          insecure_dev=True)
    off = settings_from_env({"VOICE_BRIDGE_STT_SPECULATIVE_MS": "0"}, insecure_dev=True)
    assert off.stt_speculative_ms == 0


def test_a_decode_that_loops_is_redone_in_the_full_window(monkeypatch: pytest.MonkeyPatch) -> None:
    recogniser = whisper_local.WhisperRecogniser()
    windows: list[int] = []

    def decode_window(audio: np.ndarray, language: str | None, window: int) -> tuple[str, str]:
        windows.append(window)
        return ("5 5 5 5 5 5 5 5 5 5 5" if window == 10 else "5 5"), "en"

    monkeypatch.setattr(recogniser, "_decode_window", decode_window)
    transcript = recogniser._decode(np.zeros(16000, np.float32), None)
    assert transcript.text == "5 5" and windows == [10, 30]
    assert not whisper_local._looping("Eight of spades, four of clubs, seven of hearts.")
    assert whisper_local._looping("He might. He might. He might. He might.")
