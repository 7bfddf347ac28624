"""Barge-in: detect the caller starting to talk while the bot speaks.

Caller audio arrives as 8 kHz int16 (decoded from Twilio's μ-law). Each 20 ms frame counts as speech
when it is loud enough (``energy_floor_dbfs``, which keeps line noise and faint echo of the bot out)
*and* it stands ``noise_margin_db`` above the line's recent noise floor *and* WebRTC VAD classifies
it as speech. The noise floor is the quietest frame of the last ``noise_window_ms`` (minimum
statistics): WebRTC VAD on its own calls any steady noise louder than about -30 dBFS speech, and
without the floor a caller in a car or a street would be "speaking" for the whole call, so their real
interruptions would never fire. Speech frames accumulate into a burst; gaps shorter than
``hangover_ms`` (between words, a plosive) keep the burst going, a longer gap ends it. A burst fires
one ``BargeInEvent`` once it holds ``min_speech_ms`` of speech, so a click or a cough does not cut
the bot off, and a caller who keeps talking does not fire again until the burst ends or ``reset``.

Times are in milliseconds of caller audio fed (the stream clock), not wall time: the detector is
pure and deterministic, and the caller's audio clock is what matters for "when did they start".
Cost: one VAD call (~1 µs; none on settled digital silence, see ``feed_mulaw``), one dot product and a
few comparisons per 20 ms frame.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import webrtcvad

try:  # webrtcvad's C extension, called directly where it has the function (``vad_call``)
    import _webrtcvad
except ImportError:  # pragma: no cover - a release that renamed it: is_speech still works
    _webrtcvad = None

from tts_core.audio.mulaw import mulaw_to_pcm16, mulaw_to_pcm16_bytes
from tts_core.audio.telephony_format import FRAME_MS, FRAME_SAMPLES, TELEPHONY_RATE

SAMPLE_RATE = TELEPHONY_RATE
_NOISE_BLOCK_FRAMES = 15  # the noise floor is kept as minima of 300 ms blocks
_FULL_SCALE_SQUARED = 32768.0 * 32768.0
_MULAW_ZEROS = b"\x7f\xff"
"""The two μ-law bytes that decode to 0 (-0 and +0)."""
_ZERO_PCM = bytes(2 * FRAME_SAMPLES)
VAD_SETTLED_ZERO_FRAMES = 16
"""Zero frames after which WebRTC VAD's state stops changing: at most 9 from any state measured (its
hangover runs down in at most 7 frames of 20 ms, its filters in 2), with margin."""


@dataclass(frozen=True)
class BargeInSettings:
    aggressiveness: int = 2
    """WebRTC VAD mode, 0 (least aggressive about filtering non-speech) to 3 (most)."""
    min_speech_ms: int = 200
    """Speech needed within one burst before it counts as a barge-in."""
    hangover_ms: int = 300
    """A burst ends after this much continuous non-speech."""
    energy_floor_dbfs: float = -45.0
    """Frames quieter than this (RMS re full scale) never count as speech."""
    noise_margin_db: float = 8.0
    """Frames must be this much louder than the recent noise floor to count (0 disables)."""
    noise_window_ms: int = 1500
    """How far back the noise floor looks: steady noise stops counting as speech after this long."""

    def __post_init__(self) -> None:
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError(f"aggressiveness must be 0..3, got {self.aggressiveness}")
        if self.min_speech_ms < FRAME_MS:
            raise ValueError(f"min_speech_ms must be >= {FRAME_MS}, got {self.min_speech_ms}")
        if self.hangover_ms < FRAME_MS:
            raise ValueError(f"hangover_ms must be >= {FRAME_MS}, got {self.hangover_ms}")
        if self.energy_floor_dbfs > 0:
            raise ValueError(f"energy_floor_dbfs must be <= 0, got {self.energy_floor_dbfs}")
        if self.noise_margin_db < 0:
            raise ValueError(f"noise_margin_db must be >= 0, got {self.noise_margin_db}")
        if self.noise_window_ms < FRAME_MS * _NOISE_BLOCK_FRAMES:
            raise ValueError(f"noise_window_ms must be >= 300, got {self.noise_window_ms}")


@dataclass(frozen=True)
class BargeInEvent:
    """The caller has been talking long enough to interrupt."""

    at_ms: int
    """Stream time (ms of caller audio fed) at the end of the frame that completed the detection."""
    speech_started_at_ms: int
    """Stream time of the first speech frame of the burst."""
    speech_ms: int
    """Speech accumulated in the burst (gaps excluded) when it fired."""


def vad_call(vad: webrtcvad.Vad) -> Callable[[bytes, int], bool]:
    """``vad.is_speech`` at 8 kHz as ``(pcm, samples) -> bool``, straight into the C extension:
    ``is_speech`` is a Python method that only computes the length and calls
    ``_webrtcvad.process(handle, rate, pcm, length)``, a third of its cost on a 160-sample frame.
    Falls back to ``is_speech`` should a release move that function."""
    process = getattr(_webrtcvad, "process", None)
    handle = getattr(vad, "_vad", None)
    if process is None or handle is None:
        return lambda pcm, samples: bool(vad.is_speech(pcm, SAMPLE_RATE, samples))
    return functools.partial(process, handle, SAMPLE_RATE)


def frame_dbfs(frame: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (a full-scale square wave is 0)."""
    samples = frame.astype(np.float32)
    mean_square = float(np.dot(samples, samples)) / max(1, samples.size)
    if mean_square <= 0.0:
        return -math.inf
    return 10.0 * math.log10(mean_square / _FULL_SCALE_SQUARED)


class BargeInDetector:
    """Feed every inbound frame; ``feed`` returns an event once per speech burst."""

    def __init__(self, settings: BargeInSettings | None = None) -> None:
        self.settings = settings or BargeInSettings()
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        self._is_speech = vad_call(self._vad)
        self._zero_run = 0
        """Frames of digital silence the VAD has seen in a row (counted up to VAD_SETTLED_ZERO_FRAMES)."""
        self._hangover_ms = self.settings.hangover_ms
        self._min_speech_ms = self.settings.min_speech_ms
        # Levels are compared as mean squares, so no frame needs a log.
        self._floor_ms = 10.0 ** (self.settings.energy_floor_dbfs / 10.0) * _FULL_SCALE_SQUARED
        margin_db = self.settings.noise_margin_db
        self._margin = 10.0 ** (margin_db / 10.0) if margin_db > 0 else 0.0  # 0: no noise gate
        blocks = self.settings.noise_window_ms // (FRAME_MS * _NOISE_BLOCK_FRAMES)
        # Until a whole window has been measured, assume a noise floor that gates nothing beyond
        # energy_floor_dbfs, so a caller talking from the first frame is heard as usual.
        prior = self._floor_ms / self._margin if self._margin else 0.0
        self._noise_blocks: deque[float] = deque([prior] * blocks, maxlen=blocks)
        self._blocks_min = prior
        """min(self._noise_blocks), kept as blocks come and go (every 300 ms), not per frame."""
        self._block_min = math.inf
        self._block_frames = 0
        self._pending = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._pending_len = 0
        self._clock_ms = 0
        self.last_frame_energy = 0.0
        """Mean square (int16 units) of the last whole frame analysed."""
        self.last_frame_speech = False
        """Whether the last whole frame analysed counted as caller speech (the turn detector's
        input: the same decision barge-in uses)."""
        self._reset_burst()

    # ---- state ------------------------------------------------------------------------------------
    @property
    def clock_ms(self) -> int:
        """Milliseconds of caller audio analysed so far (whole frames only)."""
        return self._clock_ms

    @property
    def speaking(self) -> bool:
        """True inside a speech burst: from its first speech frame until ``hangover_ms`` of silence."""
        return self._started_at is not None

    @property
    def speech_started_at_ms(self) -> int | None:
        """Stream time of the current burst's first speech frame; ``None`` outside a burst."""
        return self._started_at

    @property
    def speech_ms(self) -> int:
        """Speech accumulated in the current burst (gaps excluded)."""
        return self._speech_ms

    def is_above_noise(self, energy: float) -> bool:
        """Whether a level (mean square) stands ``noise_margin_db`` above the line's noise floor now."""
        return energy >= min(self._block_min, self._blocks_min) * self._margin

    def reset(self) -> None:
        """Forget the current burst (e.g. the bot starts a new utterance).

        A caller still talking fires again after another ``min_speech_ms``. The stream clock, any
        partial frame and the VAD's adapted noise model are kept: they describe the line, not the
        detection (a fresh VAD briefly takes loud steady noise for speech).
        """
        self._reset_burst()

    def _reset_burst(self) -> None:
        self._started_at: int | None = None
        self._speech_ms = 0
        self._gap_ms = 0
        self._fired = False

    # ---- analysis -----------------------------------------------------------------------------------
    def feed(self, pcm16_frame: np.ndarray, *, echo_floor: float = 0.0) -> BargeInEvent | None:
        """Analyse caller audio of any length (8 kHz int16); return an event when barge-in fires.

        Audio is cut into 20 ms frames internally; a remainder waits for the next call. If one call
        carries several frames and completes more than one burst, the first event is returned.
        ``echo_floor`` (a mean square of int16 samples, 0 = none) is the loudest the bot's own voice
        can come back as echo right now: frames no louder than it are not caller speech.
        """
        samples = np.asarray(pcm16_frame)
        if samples.dtype != np.int16:
            if not np.issubdtype(samples.dtype, np.integer):
                raise TypeError(f"expected int16 PCM samples, got {samples.dtype}")
            samples = np.clip(samples, -32768, 32767).astype(np.int16)
        samples = samples.reshape(-1)
        if self._pending_len == 0 and samples.size == FRAME_SAMPLES:  # the usual Twilio frame
            return self._analyse(samples, echo_floor)

        event: BargeInEvent | None = None
        start = 0
        if self._pending_len:
            take = min(FRAME_SAMPLES - self._pending_len, samples.size)
            self._pending[self._pending_len : self._pending_len + take] = samples[:take]
            self._pending_len += take
            start = take
            if self._pending_len < FRAME_SAMPLES:
                return None
            self._pending_len = 0
            event = self._analyse(self._pending, echo_floor)
        while samples.size - start >= FRAME_SAMPLES:
            found = self._analyse(samples[start : start + FRAME_SAMPLES], echo_floor)
            event = event or found
            start += FRAME_SAMPLES
        rest = samples.size - start
        if rest:
            self._pending[:rest] = samples[start:]
            self._pending_len = rest
        return event

    def feed_mulaw(self, mulaw: bytes, *, echo_floor: float = 0.0) -> BargeInEvent | None:
        """``feed`` for one of Twilio's μ-law frames, without the numpy decode.

        The decision is exactly ``feed(mulaw_to_pcm16(mulaw))``'s: the level is the same float32
        dot product of the same samples, and the VAD gets the same int16 bytes. Digital silence
        (every byte 0xFF or 0x7F, both decoding to 0: what Twilio sends for a muted or silent leg)
        needs neither: its level is 0, and once the VAD has seen ``VAD_SETTLED_ZERO_FRAMES`` of it
        in a row its state no longer changes (``_silent_frame``). Anything but a whole 160-byte
        frame on a frame boundary goes through ``feed``."""
        if self._pending_len or len(mulaw) != FRAME_SAMPLES:
            return self.feed(mulaw_to_pcm16(mulaw), echo_floor=echo_floor)
        if not mulaw.strip(_MULAW_ZEROS):
            return self._decide(0.0, None, echo_floor)
        pcm = mulaw_to_pcm16_bytes(mulaw)
        floats = np.frombuffer(pcm, "<i2").astype(np.float32)
        return self._decide(float(np.dot(floats, floats)) / FRAME_SAMPLES, pcm, echo_floor)

    def _analyse(self, frame: np.ndarray, echo_floor: float = 0.0) -> BargeInEvent | None:
        floats = frame.astype(np.float32)
        return self._decide(float(np.dot(floats, floats)) / FRAME_SAMPLES, frame.tobytes(), echo_floor)

    def _decide(self, energy: float, pcm: bytes | None, echo_floor: float) -> BargeInEvent | None:
        """One whole frame of ``energy`` (mean square); ``pcm`` is its int16 bytes, or None for
        digital silence (every sample 0)."""
        frame_start = self._clock_ms
        self._clock_ms += FRAME_MS
        noise = self._block_min if self._block_min < self._blocks_min else self._blocks_min
        loud = energy >= self._floor_ms and energy >= noise * self._margin and energy > echo_floor
        # Minimum statistics: the noise floor is the quietest frame of the last few 300 ms blocks.
        if energy < self._block_min:
            self._block_min = energy
        self._block_frames += 1
        if self._block_frames == _NOISE_BLOCK_FRAMES:
            self._end_noise_block()
        # The VAD sees every frame, quiet ones included, so its noise model keeps adapting.
        if pcm is None:
            voiced = self._silent_frame()
        else:
            self._zero_run = 0
            voiced = self._is_speech(pcm, FRAME_SAMPLES)
        speech = self.last_frame_speech = loud and voiced
        self.last_frame_energy = energy
        if not speech:
            if self._started_at is not None:
                self._gap_ms += FRAME_MS
                if self._gap_ms >= self._hangover_ms:
                    self._reset_burst()
            return None

        if self._started_at is None:
            self._started_at = frame_start
        self._speech_ms += FRAME_MS
        self._gap_ms = 0
        if not self._fired and self._speech_ms >= self._min_speech_ms:
            self._fired = True
            return BargeInEvent(
                at_ms=self._clock_ms, speech_started_at_ms=self._started_at, speech_ms=self._speech_ms
            )
        return None

    def _silent_frame(self) -> bool:
        """The VAD on a frame of digital silence, which never counts as speech (its level, 0, is
        below any energy floor). WebRTC VAD only updates its models on frames with some power
        (``GmmProbability``: ``total_power > kMinEnergy``); on zeros it only lets its filters and
        hangover run down, so after ``VAD_SETTLED_ZERO_FRAMES`` of them its whole state is a fixed
        point and a further zero frame changes nothing (tests/test_lean_inbound.py reads that state
        to check): the VAD is skipped from then on, until a frame with any sound."""
        if self._zero_run < VAD_SETTLED_ZERO_FRAMES:
            self._zero_run += 1
            return bool(self._is_speech(_ZERO_PCM, FRAME_SAMPLES))
        return False

    def _end_noise_block(self) -> None:
        """Minimum statistics: the noise floor is the quietest frame of the last few blocks."""
        self._noise_blocks.append(self._block_min)
        self._blocks_min = min(self._noise_blocks)
        self._block_min = math.inf
        self._block_frames = 0
