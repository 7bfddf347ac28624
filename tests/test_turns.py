"""The caller's turn-taking state machine (telephony.turns): pure, in stream time, so every timing
assertion is exact. Signals go through μ-law like Twilio's audio (helpers of test_barge_in)."""

from __future__ import annotations

import itertools

import numpy as np

from telephony.barge_in import FRAME_SAMPLES
from telephony.turns import (
    BargeIn,
    EchoReference,
    PartialDue,
    Resumed,
    Speculate,
    TurnDropped,
    TurnEnded,
    TurnSettings,
    TurnStarted,
    TurnTracker,
)
from tests.test_barge_in import RATE, line, noise, silence, speech
from tts_core.audio.mulaw import float_to_pcm16, pcm16_to_mulaw

FRAME_MS = 20


def run(tracker: TurnTracker, audio: np.ndarray, *, interruptible: bool = False,
        echo_floor: float = 0.0) -> list[tuple[int, object]]:
    """Feed whole frames; (stream ms at the end of the frame, event) for every event."""
    events = []
    for start in range(0, audio.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        for event in tracker.feed(audio[start : start + FRAME_SAMPLES], interruptible=interruptible,
                                  echo_floor=echo_floor):
            events.append((tracker.detector.clock_ms, event))
    return events


def of(events: list[tuple[int, object]], kind: type) -> list[tuple[int, object]]:
    return [(t, e) for t, e in events if isinstance(e, kind)]


def test_a_turn_keeps_its_preroll_and_ends_after_the_endpoint_silence() -> None:
    settings = TurnSettings(endpoint_ms=500, speculative_ms=0, preroll_ms=300)
    audio = line(silence(1000), speech(1200), silence(1000))
    events = run(TurnTracker(settings), audio)
    started = of(events, TurnStarted)
    ended = of(events, TurnEnded)
    assert len(started) == 1 and len(ended) == 1
    first_speech_ms = started[0][1].speech_started_at_ms
    assert 1000 <= first_speech_ms <= 1060
    at, end = ended[0]
    last_speech_end = first_speech_ms + end.speech_ms
    assert at - last_speech_end == 500, "the turn ends exactly at the endpoint silence"
    # decoded audio: 300 ms of pre-roll before the first speech frame, then speech, then the tail
    expected_ms = 300 + (last_speech_end - first_speech_ms) + settings.tail_ms
    assert end.audio.size == expected_ms * RATE // 1000
    assert np.array_equal(end.audio[:160], audio[(first_speech_ms - 300) * 8:(first_speech_ms - 280) * 8])
    assert not end.speculated and end.reason == "silence"


def test_speculative_decode_is_the_final_when_no_more_speech_comes() -> None:
    settings = TurnSettings(endpoint_ms=550, speculative_ms=250)
    events = run(TurnTracker(settings), line(silence(500), speech(1000), silence(800)))
    (spec_at, spec), = of(events, Speculate)
    (end_at, end), = of(events, TurnEnded)
    assert end_at - spec_at == 300, "speculation starts endpoint - speculative ms before the end"
    assert end.speculated and np.array_equal(end.audio, spec.audio)


def test_speech_after_the_speculation_voids_it_and_the_final_hears_everything() -> None:
    settings = TurnSettings(endpoint_ms=550, speculative_ms=250)
    events = run(TurnTracker(settings),
                 line(silence(500), speech(800, seed=1), silence(400), speech(800, seed=2), silence(800)))
    kinds = [type(e).__name__ for _, e in events]
    assert kinds == ["TurnStarted", "Speculate", "Resumed", "Speculate", "TurnEnded"], kinds
    (_, end), = of(events, TurnEnded)
    first_spec = of(events, Speculate)[0][1]
    assert end.speculated and end.audio.size > first_spec.audio.size + 800 * 8
    assert end.speech_ms >= 1900


def test_a_pause_shorter_than_the_speculative_silence_is_not_even_speculated() -> None:
    events = run(TurnTracker(TurnSettings(endpoint_ms=550, speculative_ms=250)),
                 line(silence(300), speech(600, seed=3), silence(160), speech(600, seed=4), silence(700)))
    assert len(of(events, TurnStarted)) == 1 and len(of(events, Speculate)) == 1
    assert not of(events, Resumed)


def test_noise_and_line_hum_do_not_open_turns() -> None:
    t = np.arange(RATE * 6) / RATE
    hum = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((60, 120, 180, 240, 300), 1))
    hum = (hum / np.sqrt(np.mean(hum**2)) * 10 ** (-30 / 20)).astype(np.float32)
    # hum from the first frame: its onset passes for speech until the noise floor has measured it,
    # so a turn may open, but it is dropped as noise, never decoded
    events = run(TurnTracker(), line(hum + noise(6000, -42.0, seed=5)))
    assert not of(events, TurnEnded) and len(of(events, TurnDropped)) <= 1
    # hum starting mid-call, and hiss
    events = run(TurnTracker(), line(np.concatenate([silence(2000), hum[: RATE * 4]])))
    assert not of(events, TurnEnded)
    assert run(TurnTracker(), line(noise(6000, -35.0, seed=6))) == []
    # a click or a cough (shorter than the barge-in minimum) opens nothing either
    assert run(TurnTracker(), line(silence(500), speech(100), silence(1000))) == []


def test_a_turn_is_cut_at_the_maximum_length_and_the_next_opens_while_the_caller_talks() -> None:
    settings = TurnSettings(endpoint_ms=500, speculative_ms=200, max_turn_ms=1500)
    events = run(TurnTracker(settings), line(silence(300), speech(2000), silence(800)))
    ended = of(events, TurnEnded)
    assert [e.reason for _, e in ended] == ["max_length", "silence"]
    assert ended[0][1].audio.size <= 1500 * 8
    assert len(of(events, TurnStarted)) == 2


def test_partials_come_at_the_interval_while_the_caller_talks() -> None:
    settings = TurnSettings(partials=True, partial_interval_ms=500)
    events = run(TurnTracker(settings), line(silence(300), speech(2000), silence(800)))
    partials = of(events, PartialDue)
    assert len(partials) >= 3
    assert all(b[1].audio.size > a[1].audio.size for a, b in itertools.pairwise(partials))
    assert partials[-1][0] < of(events, TurnEnded)[0][0]


def test_barge_in_fires_only_while_the_bot_speaks_interruptibly_and_the_turn_goes_on() -> None:
    audio = line(silence(300), speech(1000), silence(800))
    quiet = run(TurnTracker(), audio, interruptible=False)
    assert not of(quiet, BargeIn) and len(of(quiet, TurnEnded)) == 1
    talking_over = run(TurnTracker(), audio, interruptible=True)
    (at, barge), = of(talking_over, BargeIn)
    assert barge.event.speech_ms == 200
    (started_at, _), = of(talking_over, TurnStarted)
    assert started_at == at, "the same decision opens the turn and cuts the bot off"
    assert len(of(talking_over, TurnEnded)) == 1


def test_the_bots_own_voice_coming_back_20_db_down_is_not_the_caller() -> None:
    now = [0.0]
    echo = EchoReference(margin_db=16.0, clock=lambda: now[0])
    bot = line(speech(3000, dbfs=-18.0, seed=11), floor_dbfs=None)
    sent = pcm16_to_mulaw(bot)
    tracker = TurnTracker()
    events: list[object] = []
    delay = 5  # frames of echo path
    frames = [sent[i : i + 160] for i in range(0, len(sent), 160)]
    for index in range(len(frames) + 40):
        if index < len(frames):
            echo.on_sent([frames[index]])
        back = index - delay
        heard = bot[back * 160 : (back + 1) * 160] if 0 <= back < len(frames) else np.zeros(160)
        caller = line(heard.astype(np.float32) / 32768 * 0.1)  # -20 dB, plus line noise, via μ-law
        events += tracker.feed(caller, interruptible=True, echo_floor=echo.floor())
        now[0] += 0.02
    assert events == []
    # ... while the caller talking over the bot at a normal level is heard
    caller = line(speech(1000, dbfs=-24.0, seed=12))
    for index in range(50):
        echo.on_sent([frames[index]])
        events += tracker.feed(caller[index * 160 : (index + 1) * 160], interruptible=True,
                               echo_floor=echo.floor())
        now[0] += 0.02
    assert any(isinstance(e, BargeIn) for e in events)


def test_echo_reference_forgets_after_its_window() -> None:
    now = [0.0]
    echo = EchoReference(margin_db=10.0, window_s=1.0, clock=lambda: now[0])
    echo.on_sent([pcm16_to_mulaw(float_to_pcm16(np.full(160, 0.1, dtype=np.float32)))])
    assert echo.floor() > 0
    now[0] = 1.5
    assert echo.floor() == 0.0
