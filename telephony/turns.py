"""Turn taking on the caller's line: one voice-activity state machine for barge-in and end of turn.

Every caller frame goes through the same decision (``BargeInDetector``: energy floor, noise gate,
echo gate, WebRTC VAD), so "the caller is talking" means the same thing whether it cuts the bot off
or starts a turn for the recogniser. The tracker is pure and deterministic (times are stream
milliseconds of caller audio, not wall time) and emits events; ``telephony.listener`` turns them
into decodes and prompts.

A turn:
- opens when a speech burst holds ``min_speech_ms`` of speech (a click or a cough does not), with
  ``preroll_ms`` of audio from before the burst's first speech frame, so first words are not clipped;
- at ``speculative_ms`` of silence, the audio so far is handed out for a *speculative* decode; if
  the caller speaks again the speculation is void (``Resumed``), else the turn ends at
  ``endpoint_ms`` of silence with exactly that audio (``TurnEnded.speculated``), so the decode
  already ran while we waited for the endpoint;
- ends at ``max_turn_ms`` whatever happens (the recogniser's window is bounded);
- with partials on, hands out the audio so far every ``partial_interval_ms`` while the caller talks.

Echo: a caller's phone (or the network) can return the bot's own voice. ``EchoReference`` keeps the
level of what the bridge sent over the last second; a caller frame must be louder than that level
minus ``margin_db`` to count as speech. Real echo paths return the far end 20-40 dB down (G.168
asks echo cancellers for 6 dB + cancellation on top), so a 16 dB margin leaves a caller who talks
over the bot at a normal level audible.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from telephony.barge_in import FRAME_MS, FRAME_SAMPLES, BargeInDetector, BargeInEvent, BargeInSettings
from tts_core.audio.mulaw import mulaw_to_pcm16

DEFAULT_TAIL_MS = 250
"""Silence kept after the last speech frame in the audio decoded when speculation is off (the
same audio a speculative decode would have seen at the default setting)."""
MAX_BURST_MS = 3000
"""How much audio before a turn opens is kept to find its first speech frame and pre-roll."""


@dataclass(frozen=True)
class TurnSettings:
    endpoint_ms: int = 550
    speculative_ms: int = 250
    preroll_ms: int = 300
    max_turn_ms: int = 20000
    partials: bool = False
    partial_interval_ms: int = 1000

    def __post_init__(self) -> None:
        if self.endpoint_ms < 2 * FRAME_MS:
            raise ValueError(f"endpoint_ms must be >= {2 * FRAME_MS}")
        if not 0 <= self.speculative_ms < self.endpoint_ms:
            raise ValueError("speculative_ms must be 0 (off) or below endpoint_ms")
        if self.max_turn_ms < self.endpoint_ms:
            raise ValueError("max_turn_ms must be >= endpoint_ms")

    @property
    def tail_ms(self) -> int:
        """Silence after the last speech kept in the decoded audio (whole frames: the speculative
        decode starts on the first frame at or past ``speculative_ms``)."""
        tail = self.speculative_ms or min(DEFAULT_TAIL_MS, self.endpoint_ms - FRAME_MS)
        return -(-tail // FRAME_MS) * FRAME_MS


# ---- events ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BargeIn:
    event: BargeInEvent


@dataclass(frozen=True)
class TurnStarted:
    turn: int
    speech_started_at_ms: int


@dataclass(frozen=True)
class Speculate:
    turn: int
    audio: np.ndarray
    """8 kHz int16: pre-roll, speech, and ``speculative_ms`` of trailing silence."""


@dataclass(frozen=True)
class Resumed:
    turn: int


@dataclass(frozen=True)
class PartialDue:
    turn: int
    audio: np.ndarray


@dataclass(frozen=True)
class TurnEnded:
    turn: int
    audio: np.ndarray
    speech_ms: int
    """Stream time from the turn's first to its last speech frame."""
    reason: str
    """``silence`` (endpoint reached) or ``max_length``."""
    speculated: bool
    """``audio`` is exactly the audio of this turn's last ``Speculate``: its decode is the final."""


@dataclass(frozen=True)
class TurnDropped:
    """The turn was steady noise, not speech: by the time it ended, the line's noise floor had
    risen to its level (hum or hiss starting mid-call passes for speech until the floor adapts)."""

    turn: int


TurnEvent = BargeIn | TurnStarted | Speculate | Resumed | PartialDue | TurnEnded | TurnDropped
Frame = np.ndarray | bytes
"""A caller frame as fed: int16 samples (``feed``) or Twilio's μ-law bytes (``feed_mulaw``)."""
_NO_EVENTS: tuple[TurnEvent, ...] = ()
"""What the usual frame (one that completes nothing) returns: no list built per frame."""


def join_frames(frames: list[Frame]) -> np.ndarray:
    """Frames as one int16 array (μ-law frames decoded here, the samples ``feed`` would have had)."""
    if all(isinstance(frame, bytes) for frame in frames):
        return mulaw_to_pcm16(b"".join(frames))  # type: ignore[arg-type]
    return np.concatenate([frame if isinstance(frame, np.ndarray) else mulaw_to_pcm16(frame)
                           for frame in frames])


class TurnTracker:
    """Feed every caller frame (20 ms, 8 kHz int16); get barge-in and turn events back."""

    def __init__(self, settings: TurnSettings | None = None,
                 barge_in: BargeInSettings | None = None) -> None:
        self.settings = settings or TurnSettings()
        self.detector = BargeInDetector(barge_in)
        self._min_speech_ms = self.detector.settings.min_speech_ms
        self._recent: deque[Frame] = deque(maxlen=MAX_BURST_MS // FRAME_MS)
        self._was_interruptible = False
        self._turn_id = 0
        self._frames: list[Frame] | None = None
        """The open turn's audio, one frame per entry; None between turns."""
        self._turn_started_ms = 0
        self._first_speech_ms = 0
        self._last_speech_end_ms = 0
        self._speculated_frames: int | None = None
        self._last_partial_ms = 0
        self._speech_levels: list[float] = []

    @property
    def in_turn(self) -> bool:
        return self._frames is not None

    @property
    def turn(self) -> int:
        """Id of the open turn (or of the last one)."""
        return self._turn_id

    def feed(self, frame: np.ndarray, *, interruptible: bool, echo_floor: float = 0.0
             ) -> Sequence[TurnEvent]:
        """One frame of 8 kHz int16 samples; the events it completes (usually none)."""
        self._rearm(interruptible)
        return self._track(frame, self.detector.feed(frame, echo_floor=echo_floor), interruptible)

    def feed_mulaw(self, mulaw: bytes, *, interruptible: bool, echo_floor: float = 0.0
                   ) -> Sequence[TurnEvent]:
        """``feed`` for one of Twilio's μ-law frames, as it came: decoded only into the audio a
        turn hands out (``Speculate``, ``PartialDue``, ``TurnEnded``), with the same samples."""
        self._rearm(interruptible)
        return self._track(mulaw, self.detector.feed_mulaw(mulaw, echo_floor=echo_floor), interruptible)

    def _rearm(self, interruptible: bool) -> None:
        if interruptible and not self._was_interruptible:
            # The bot just started interruptible speech: a caller already talking must talk for
            # another min_speech_ms to cut it off (as before a turn existed).
            self.detector.reset()
        self._was_interruptible = interruptible

    def _track(self, frame: Frame, fired: BargeInEvent | None, interruptible: bool) -> Sequence[TurnEvent]:
        detector = self.detector
        speech = detector.last_frame_speech
        if self._frames is None and fired is None and not speech:
            self._recent.append(frame)  # the usual frame between turns: nothing happens
            return _NO_EVENTS
        events: list[TurnEvent] = []
        if fired is not None and interruptible:
            events.append(BargeIn(fired))
        now = detector.clock_ms
        if self._frames is None:
            self._recent.append(frame)
            started = detector.speech_started_at_ms
            if speech and started is not None and detector.speech_ms >= self._min_speech_ms:
                self._open(started, now, events)
            return events

        frames = self._frames
        frames.append(frame)
        settings = self.settings
        if speech:
            self._last_speech_end_ms = now
            self._speech_levels.append(detector.last_frame_energy)
            if self._speculated_frames is not None:
                self._speculated_frames = None
                events.append(Resumed(self._turn_id))
        silence = now - self._last_speech_end_ms
        if settings.speculative_ms and self._speculated_frames is None \
                and silence >= settings.speculative_ms:
            self._speculated_frames = len(frames) - (silence - settings.tail_ms) // FRAME_MS
            events.append(Speculate(self._turn_id, join_frames(frames[: self._speculated_frames])))
        if silence >= settings.endpoint_ms:
            if self._speculated_frames is not None:
                keep, speculated = self._speculated_frames, True
            else:
                keep, speculated = len(frames) - (silence - settings.tail_ms) // FRAME_MS, False
            self._close(join_frames(frames[:keep]), "silence", speculated, events)
        elif now - self._turn_started_ms >= settings.max_turn_ms:
            self._close(join_frames(frames), "max_length", False, events)
        elif settings.partials and speech and now - self._last_partial_ms >= settings.partial_interval_ms:
            self._last_partial_ms = now
            events.append(PartialDue(self._turn_id, join_frames(frames)))
        return events

    def _open(self, speech_started_ms: int, now: int, events: list[TurnEvent]) -> None:
        wanted = (now - speech_started_ms + self.settings.preroll_ms) // FRAME_MS
        recent = list(self._recent)
        self._frames = recent[-wanted:] if wanted < len(recent) else recent
        self._recent.clear()
        self._turn_id += 1
        self._turn_started_ms = now - len(self._frames) * FRAME_MS
        self._first_speech_ms = speech_started_ms
        self._last_speech_end_ms = now
        self._last_partial_ms = now
        self._speculated_frames = None
        self._speech_levels = []
        events.append(TurnStarted(self._turn_id, speech_started_ms))

    def _close(self, audio: np.ndarray, reason: str, speculated: bool, events: list[TurnEvent]) -> None:
        levels = self._speech_levels
        if levels and reason == "silence" and not self.detector.is_above_noise(float(np.median(levels))):
            events.append(TurnDropped(self._turn_id))
        else:
            events.append(TurnEnded(self._turn_id, audio, self._last_speech_end_ms - self._first_speech_ms,
                                    reason, speculated))
        self._frames = None
        self._speculated_frames = None
        # After max_length the caller is still inside a qualified burst: the next turn opens on
        # their next speech frame.


_SQUARES = (mulaw_to_pcm16(bytes(range(256))).astype(np.float64) ** 2).astype(np.float32)
"""The square of each μ-law byte's int16 value: a frame's mean square without decoding it."""
_LEVELS: dict[bytes, float] = {}
_LEVELS_MAX = 32768
"""Frame -> mean square, shared by all calls. Phrase-cached prompts send the very same frame
objects on every call (their hash is cached on the object), so their level is computed once per
process, not 50 times a second per call; live frames are computed and cached like any other.
Bounded (about 11 minutes of distinct audio); emptied when full."""


def frame_level(frame: bytes) -> float:
    """Mean square (int16 scale) of one 160-byte μ-law frame; -1 for a short frame (ignored)."""
    level = _LEVELS.get(frame)
    if level is None:
        if len(frame) != FRAME_SAMPLES:
            return -1.0
        level = float(_SQUARES[np.frombuffer(frame, np.uint8)].sum(dtype=np.float64)) / FRAME_SAMPLES
        if len(_LEVELS) >= _LEVELS_MAX:
            _LEVELS.clear()
        _LEVELS[frame] = level
    return level


class EchoReference:
    """How loud the bot's own voice may come back right now, from the frames the bridge sent.

    ``on_sent`` sees every batch of μ-law frames sent to Twilio; ``floor`` is the loudest frame
    sent within ``window_s`` (which covers Twilio's buffer ahead of playback plus the echo's round
    trip), ``margin_db`` down, as a mean square of int16 samples.
    """

    def __init__(self, margin_db: float = 16.0, window_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.factor = 10.0 ** (-margin_db / 10.0)
        self.window_s = window_s
        self._clock = clock
        self._levels: deque[tuple[float, float]] = deque()

    def on_sent(self, frames: list[bytes]) -> None:
        loudest = -1.0
        for frame in frames:
            level = frame_level(frame)
            if level > loudest:
                loudest = level
        if loudest < 0:
            return
        now = self._clock()
        levels = self._levels
        # Only a running maximum matters: drop older entries that are not louder.
        while levels and levels[-1][1] <= loudest:
            levels.pop()
        levels.append((now, loudest))

    def floor(self) -> float:
        levels = self._levels
        if not levels:
            return 0.0
        horizon = self._clock() - self.window_s
        while levels and levels[0][0] < horizon:
            levels.popleft()
        return levels[0][1] * self.factor if levels else 0.0
