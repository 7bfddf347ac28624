"""The speech recogniser interface: caller audio in, text out, behind one small ABC.

Every recogniser (the embedded faster-whisper one, a remote OpenAI-compatible ``/audio/transcriptions``
server, a realtime session) takes one caller turn at a time as 16 kHz mono float32 and returns a
``Transcript``. Calls never see which one runs: a call's turn detector decides *when* a turn is
worth decoding; the recogniser decides *how*. Everything that can go wrong is one ``RecogniserError``
(bad model, refused request, timeout), so callers have exactly one thing to catch.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from tts_core.audio.arrays import FloatAudio
from tts_core.errors import UpstreamFailed
from tts_core.fleet import ServerSnapshot

SAMPLE_RATE = 16000
"""What every recogniser takes (Whisper's rate; telephone audio is upsampled once per turn)."""


class RecogniserError(UpstreamFailed, RuntimeError):
    """The recogniser cannot load, or cannot transcribe this turn; the message says why."""

    kind = "recognition_failed"


@dataclass(frozen=True)
class Transcript:
    text: str
    """The recognised words, stripped; empty when the turn held no speech."""
    language: str
    """ISO 639-1 code of the language recognised (or the one requested)."""
    duration: float
    """Seconds of audio decoded."""
    decode_ms: float
    """Time the recogniser spent on it (queueing for a slot excluded)."""


class Recogniser(abc.ABC):
    """One per server, shared by every call. Implementations must be safe to call concurrently."""

    name: str = "recogniser"

    @abc.abstractmethod
    async def load(self) -> None:
        """Prepare (load and verify weights, open pools); raise RecogniserError if it cannot work."""

    @abc.abstractmethod
    async def transcribe(
        self, audio: FloatAudio, *, language: str | None = None, deadline: float | None = None,
    ) -> Transcript:
        """Recognise one turn: float32 mono at ``SAMPLE_RATE``.

        ``deadline`` is the ``time.monotonic()`` by which the text is wanted: when the recogniser's
        capacity is contended, the earliest deadline goes first (a partial re-decode passes a late
        one, a final an early one). Cancelling the awaiting task gives up the turn: work not started
        is dropped; work in flight may finish in the background but its result is discarded.
        """

    def has_free_slot(self) -> bool:
        """True if a decode started now would not wait (used to skip optional partial re-decodes)."""
        return True

    @property
    def busy(self) -> int:
        """Decodes in progress (for /health)."""
        return 0

    def servers(self) -> list[ServerSnapshot]:
        """Per-server state of a remote recogniser's fleet (for /health and /metrics); [] if local."""
        return []

    async def aclose(self) -> None:  # noqa: B027 (optional hook: most recognisers hold something)
        """Release pools and connections. Idempotent."""


def check_audio(audio: ArrayLike) -> FloatAudio:
    """The one audio shape recognisers accept: 1-D float32 (a copy only when it must convert)."""
    samples = np.asarray(audio)
    if samples.ndim != 1:
        raise RecogniserError(f"audio must be mono (1-D), got shape {samples.shape}")
    if samples.dtype != np.float32:
        samples = samples.astype(np.float32)
    return samples
