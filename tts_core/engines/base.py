"""The engine contract every TTS backend implements.

An engine loads once per process, is warmed up per voice, and streams one utterance at a time as
float32 mono chunks at its native ``sample_rate``. Callers (the call pipeline, the warmup endpoint,
benchmarks) only ever see this interface, so an in-process GPU model, a remote OpenAI-compatible
server and the embedded Piper voice are interchangeable.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from tts_core.audio.arrays import FloatAudio
from tts_core.errors import Unprocessable, UpstreamFailed
from tts_core.fleet import ServerSnapshot
from tts_core.presets import Preset
from tts_core.voices import Voice

log = logging.getLogger(__name__)


class EngineError(UpstreamFailed, RuntimeError):
    """Synthesis failed; the message is safe to show to an operator or agent."""

    kind = "engine_error"


class UnsupportedVoiceError(Unprocessable, EngineError):
    """The engine cannot speak with the requested voice (e.g. cloning on a fixed-voice engine):
    the request's fault, so 422, still an ``EngineError`` for callers that catch those."""

    kind = "unsupported_voice"


@dataclass(frozen=True)
class SpeechRequest:
    """One utterance to synthesise."""

    text: str
    voice_id: str
    preset: Preset
    voice: Voice | None = None
    """Reference audio for cloning engines; ``None`` for an engine's built-in voices."""
    first_in_turn: bool = False
    """True for the first segment of an agent turn (engines may use a smaller first chunk)."""
    deadline: float | None = None
    """``time.monotonic()`` by which the caller runs out of audio without this one; engines with
    contended slots serve the earliest deadline first. None = needed now."""
    deadline_fn: Callable[[], float | None] | None = None
    """When set, asked instead of ``deadline`` each time a slot frees while this request waits:
    a pre-render (+inf: no one is listening yet) becomes urgent once a call follows it."""

    def slot_deadline(self) -> float | Callable[[], float | None] | None:
        return self.deadline_fn if self.deadline_fn is not None else self.deadline


@dataclass
class EngineStats:
    """Counters an engine keeps for /health and metrics."""

    utterances: int = 0
    cancelled: int = 0
    failures: int = 0
    ignored_params: set[str] = field(default_factory=set)


class Engine(ABC):
    """A speech engine. Subclasses implement ``load`` and ``_stream``."""

    name: str = "engine"
    sample_rate: int = 24000
    supports_cloning: bool = False

    def __init__(self) -> None:
        self.stats = EngineStats()
        self._warned_params: set[str] = set()

    # ---- lifecycle -------------------------------------------------------------------------
    @abstractmethod
    async def load(self) -> None:
        """Load weights / open connections. Idempotent; called once at server start."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing
        """Release resources at shutdown."""

    def builtin_voices(self) -> list[str]:
        """Voice ids the engine speaks without reference audio."""
        return []

    @property
    def default_voice(self) -> str | None:
        voices = self.builtin_voices()
        return voices[0] if voices else None

    @property
    def busy_slots(self) -> int:
        """Syntheses running right now (for tests, health and metrics)."""
        return 0

    # ---- synthesis -------------------------------------------------------------------------
    async def stream(self, request: SpeechRequest) -> AsyncGenerator[FloatAudio, None]:
        """Stream one utterance as float32 mono chunks at ``sample_rate``.

        Cancelling the consumer (or closing the iterator) stops the work within one chunk.
        """
        if not request.text.strip():
            return
        if request.voice is None and request.voice_id not in self.builtin_voices():
            raise UnsupportedVoiceError(
                f"engine {self.name!r} has no built-in voice {request.voice_id!r}"
            )
        if request.voice is not None and not self.supports_cloning:
            raise UnsupportedVoiceError(
                f"engine {self.name!r} cannot clone voices; use one of {self.builtin_voices()}"
            )
        self.stats.utterances += 1
        ended = False  # completed or failed; otherwise the consumer cancelled or walked away
        try:
            async with aclosing(self._stream(request)) as chunks:
                async for chunk in chunks:
                    if chunk.size:
                        yield chunk
            ended = True
        except EngineError:
            ended = True
            self.stats.failures += 1
            raise
        except Exception as exc:  # an engine bug must reach the caller as an EngineError
            ended = True
            self.stats.failures += 1
            log.exception("engine %s failed with an unexpected error", self.name)  # a bug: shown
            raise EngineError(f"{self.name} synthesis failed: {exc}") from exc
        finally:
            if not ended:
                self.stats.cancelled += 1

    @abstractmethod
    def _stream(self, request: SpeechRequest) -> AsyncGenerator[FloatAudio, None]:
        """Engine-specific streaming; the base class validates and counts around it."""

    async def warmup(self, voice_id: str, preset: Preset, voice: Voice | None = None
                     ) -> dict[str, float]:
        """Run a minimal synthesis so kernels, caches and the voice are hot.

        Returns milliseconds per warmed target (a server of a remote fleet, a model replica);
        engines with one target report it as ``{"engine": ms}``.
        """
        started = time.perf_counter()
        # Background work: an engine slot goes to any live utterance first (deadline +inf).
        request = SpeechRequest(text="Hello.", voice_id=voice_id, preset=preset, voice=voice,
                                deadline=math.inf)
        samples = 0
        async with aclosing(self.stream(request)) as chunks:
            async for chunk in chunks:
                samples += chunk.size
        if not samples:
            raise EngineError(f"{self.name} warmup produced no audio")
        return {"engine": round((time.perf_counter() - started) * 1000, 2)}

    def servers(self) -> list[ServerSnapshot]:
        """Per-server state of a remote engine's fleet (for /health and /metrics); [] if local."""
        return []

    def note_ignored_params(self, preset: Preset, understood: set[str]) -> None:
        """Log once per parameter that a preset sets but this engine does not use."""
        ignored = set(preset.generation_params()) - understood - self._warned_params
        if ignored:
            self._warned_params |= ignored
            self.stats.ignored_params |= ignored
            log.info("engine %s ignores preset parameter(s) %s", self.name, sorted(ignored))
