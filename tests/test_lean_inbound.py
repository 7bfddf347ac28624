"""The lean inbound frame path (issue 11): Twilio's μ-law frames reach the barge-in and turn detectors
as they came (``feed_mulaw``), decoded only into what needs samples. Each shortcut must give exactly
the decisions, events and audio of the decoded path (``feed``), on recorded human speech."""

from __future__ import annotations

import ctypes
import functools
import struct
from pathlib import Path

import numpy as np
import pytest
import webrtcvad

from telephony import barge_in
from telephony.barge_in import FRAME_SAMPLES, VAD_SETTLED_ZERO_FRAMES, BargeInDetector, BargeInSettings
from telephony.turns import PartialDue, Speculate, TurnEnded, TurnSettings, TurnTracker
from tests.test_barge_in import at_level, noise, pink_noise, silence
from tts_core.audio.mulaw import MULAW_SILENCE, float_to_pcm16, mulaw_to_pcm16, pcm16_to_mulaw

SPEECH_DIR = Path(__file__).parent / "data" / "speech"


def recorded(name: str) -> np.ndarray:
    return mulaw_to_pcm16((SPEECH_DIR / name).read_bytes()).astype(np.float32) / 32768


def caller_line(level_dbfs: float = -25.0, noise_dbfs: float | None = -55.0, seed: int = 0,
                pause_ms: int = 900) -> bytes:
    """Both recorded clips with pauses, over line noise (None: pauses of digital silence, as a
    muted or silence-suppressed leg sends), as Twilio's μ-law bytes."""
    parts = [silence(1200)]
    for name in ("go_forward_ten_meters.ulaw", "he_was_not_an_ill_disposed_young_man.ulaw"):
        parts += [at_level(recorded(name), level_dbfs), silence(pause_ms)]
    audio = np.concatenate(parts)
    if noise_dbfs is not None:
        audio = audio + pink_noise(audio.size // 8 + 1, noise_dbfs, seed=seed)[: audio.size]
    return pcm16_to_mulaw(float_to_pcm16(audio))


def frames_of(mulaw: bytes) -> list[bytes]:
    return [mulaw[i : i + FRAME_SAMPLES] for i in range(0, len(mulaw) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]


@pytest.mark.parametrize(("level", "noise_dbfs", "echo_floor", "pause_ms"), [
    (-25.0, -55.0, 0.0, 900), (-15.0, -40.0, 0.0, 900), (-25.0, -55.0, 2e5, 900), (-35.0, -60.0, 0.0, 900),
    # digital silence between words: the VAD is skipped once settled, and must be missed nowhere
    (-25.0, None, 0.0, 900), (-15.0, None, 0.0, 900), (-35.0, None, 0.0, 900), (-25.0, None, 0.0, 60),
    (-25.0, None, 0.0, 200), (-25.0, None, 0.0, 320), (-25.0, None, 2e5, 400)])
def test_mulaw_frames_get_exactly_the_decisions_of_decoded_frames(level: float, noise_dbfs: float | None,
                                                                  echo_floor: float, pause_ms: int) -> None:
    decoded, raw = BargeInDetector(), BargeInDetector()
    decided = []
    for frame in frames_of(caller_line(level, noise_dbfs, pause_ms=pause_ms)):
        expected = decoded.feed(mulaw_to_pcm16(frame), echo_floor=echo_floor)
        assert raw.feed_mulaw(frame, echo_floor=echo_floor) == expected
        assert raw.last_frame_energy == decoded.last_frame_energy  # bit for bit: the same float32 sum
        assert raw.last_frame_speech == decoded.last_frame_speech
        decided.append(raw.last_frame_speech)
    assert raw.clock_ms == decoded.clock_ms
    assert any(decided) and not all(decided), "the clip holds speech and pauses"


def test_mulaw_chunks_that_are_not_whole_frames_fall_back_to_the_decoded_path() -> None:
    mulaw = caller_line()
    decoded, raw = BargeInDetector(), BargeInDetector()
    events_decoded, events_raw = [], []
    for start in range(0, len(mulaw), 100):  # Twilio never does this; another sender might
        chunk = mulaw[start : start + 100]
        events_decoded.append(decoded.feed(mulaw_to_pcm16(chunk)))
        events_raw.append(raw.feed_mulaw(chunk))
    assert events_raw == events_decoded and any(events_raw)
    assert raw.clock_ms == decoded.clock_ms


def test_a_turn_fed_mulaw_hands_out_the_same_events_and_audio() -> None:
    settings = TurnSettings(partials=True, partial_interval_ms=400)
    decoded, raw = TurnTracker(settings), TurnTracker(settings)
    got: list[tuple[object, object]] = []
    for index, frame in enumerate(frames_of(caller_line())):
        interruptible = 100 <= index < 200
        expected = list(decoded.feed(mulaw_to_pcm16(frame), interruptible=interruptible))
        events = list(raw.feed_mulaw(frame, interruptible=interruptible))
        assert [type(e) for e in events] == [type(e) for e in expected]
        got += zip(events, expected, strict=True)
    kinds = {type(e) for e, _ in got}
    assert {Speculate, PartialDue, TurnEnded} <= kinds, kinds
    for event, expected in got:
        audio = getattr(event, "audio", None)
        if audio is not None:
            assert audio.dtype == np.int16 and np.array_equal(audio, expected.audio)  # type: ignore[attr-defined]
        else:
            assert event == expected


def test_a_turn_mixing_both_kinds_of_frames_hands_out_their_samples_in_order() -> None:
    tracker = TurnTracker(TurnSettings(speculative_ms=0))
    audio = mulaw_to_pcm16(caller_line())
    ended = []
    for index, frame in enumerate(frames_of(pcm16_to_mulaw(audio))):
        pcm = audio[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES]
        events = tracker.feed_mulaw(frame, interruptible=False) if index % 2 else \
            tracker.feed(pcm, interruptible=False)
        ended += [e for e in events if isinstance(e, TurnEnded)]
    assert ended
    for turn in ended:
        start = audio.tobytes().find(turn.audio[:400].tobytes())
        assert start >= 0 and np.array_equal(audio[start // 2 : start // 2 + turn.audio.size], turn.audio)


def test_steady_noise_on_the_mulaw_path_is_measured_like_the_decoded_one() -> None:
    mulaw = pcm16_to_mulaw(float_to_pcm16(noise(3000, -30.0, seed=4)))
    decoded, raw = BargeInDetector(), BargeInDetector()
    for frame in frames_of(mulaw):
        decoded.feed(mulaw_to_pcm16(frame))
        raw.feed_mulaw(frame)
        assert raw.is_above_noise(1e6) == decoded.is_above_noise(1e6)
    assert raw.speaking == decoded.speaking


# ---- digital silence skips the VAD once it has settled ---------------------------------------------
@pytest.mark.parametrize(("args", "expected"), [
    ({"noise_dbfs": None}, [(1900, 1700), (5340, 5140)]),
    ({"noise_dbfs": -55.0}, [(1900, 1700), (5340, 5140)]),
    ({"noise_dbfs": None, "level_dbfs": -15.0}, [(1780, 1200), (5320, 5120)]),
    ({"noise_dbfs": None, "pause_ms": 200}, [(1900, 1700), (4640, 4440)]),
])
def test_barge_in_on_recorded_speech_fires_when_it_did_before_the_lean_path(
        args: dict[str, float | None], expected: list[tuple[int, int]]) -> None:
    """(at_ms, speech_started_at_ms) pinned from the code before issue 11's inbound work (0786cc8),
    which decoded every frame and ran the VAD on each."""
    detector = BargeInDetector()
    events = [e for frame in frames_of(caller_line(**args))  # type: ignore[arg-type]
              if (e := detector.feed_mulaw(frame)) is not None]
    assert [(e.at_ms, e.speech_started_at_ms) for e in events] == expected


def vad_state(vad: webrtcvad.Vad) -> bytes:
    """WebRTC VAD's whole C state (``VadInstT``: models, minimum tracker, filters, hangover)."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    state = ctypes.string_at(get(vad._vad, b"WebRtcVadPtr"), VAD_STATE_BYTES)
    init_flag, = struct.unpack_from("i", state, VAD_STATE_BYTES - 4)
    assert init_flag == 42, "VadInstT's layout moved: re-check VAD_SETTLED_ZERO_FRAMES against it"
    return state


VAD_STATE_BYTES = 736
"""sizeof(VadInstT) in WebRTC's common_audio/vad/vad_core.h, ending with ``init_flag`` (42)."""


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_after_digital_silence_the_vad_is_exactly_where_feeding_it_every_frame_leaves_it(
        mode: int, seed: int) -> None:
    """The history ends at a random frame, inside speech (hangover running) or noise; then 2 s of
    digital silence, of which the detector hands the VAD only the first frames."""
    history = frames_of(caller_line(-20.0, -50.0 if seed % 2 else None, seed=seed))
    cut = np.random.default_rng(seed).integers(20, len(history))
    detector = BargeInDetector(BargeInSettings(aggressiveness=mode))
    reference = webrtcvad.Vad(mode)
    for frame in history[:cut]:
        detector.feed_mulaw(frame)
        reference.is_speech(mulaw_to_pcm16(frame).tobytes(), 8000)
    assert vad_state(detector._vad) == vad_state(reference)
    for _ in range(100):
        detector.feed_mulaw(bytes([MULAW_SILENCE]) * FRAME_SAMPLES)
        reference.is_speech(bytes(2 * FRAME_SAMPLES), 8000)
    assert vad_state(detector._vad) == vad_state(reference)


def test_settled_digital_silence_skips_the_vad_and_any_sound_reaches_it() -> None:
    detector = BargeInDetector()
    calls: list[bytes] = []
    is_speech = detector._is_speech

    def counting(pcm: bytes, samples: int) -> bool:
        calls.append(pcm)
        return is_speech(pcm, samples)

    detector._is_speech = counting  # type: ignore[method-assign]
    for frame in frames_of(caller_line(noise_dbfs=None))[:40]:  # 1.2 s of digital silence
        detector.feed_mulaw(frame)
    assert len(calls) == VAD_SETTLED_ZERO_FRAMES, "the VAD sees the first frames of silence only"
    calls.clear()
    zero, minus_zero = bytes([MULAW_SILENCE]) * FRAME_SAMPLES, b"\x7f" * FRAME_SAMPLES
    for frame in [zero] * 30 + [minus_zero, zero] * 15:
        assert detector.feed_mulaw(frame) is None and not detector.last_frame_speech
    assert calls == [], "settled: no frame of zeros reaches the VAD"
    faint = bytearray(zero)
    faint[80] = 0xFE  # one sample of +8: not silence
    detector.feed_mulaw(bytes(faint))
    assert calls == [mulaw_to_pcm16(bytes(faint)).tobytes()]
    for _ in range(VAD_SETTLED_ZERO_FRAMES + 5):
        detector.feed_mulaw(zero)
    assert len(calls) == 1 + VAD_SETTLED_ZERO_FRAMES, "after a sound, zeros reach it until it settles again"
    detector.feed(np.zeros(FRAME_SAMPLES, np.int16))  # the decoded path: always the VAD
    assert len(calls) == 2 + VAD_SETTLED_ZERO_FRAMES


def test_the_vad_is_called_straight_into_its_extension_or_through_is_speech_as_a_fallback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [mulaw_to_pcm16(f).tobytes() for f in frames_of(caller_line())[::7]]
    reference = webrtcvad.Vad(2)
    expected = [reference.is_speech(pcm, 8000) for pcm in frames]
    direct = barge_in.vad_call(webrtcvad.Vad(2))
    assert isinstance(direct, functools.partial)
    assert [direct(pcm, FRAME_SAMPLES) for pcm in frames] == expected
    monkeypatch.setattr(barge_in, "_webrtcvad", object())  # a release without ``process``
    fallback = barge_in.vad_call(webrtcvad.Vad(2))
    assert not isinstance(fallback, functools.partial)
    assert [fallback(pcm, FRAME_SAMPLES) for pcm in frames] == expected
    assert any(expected) and not all(expected)
