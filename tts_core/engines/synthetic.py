"""A deterministic, dependency-free engine for tests, load tests and benchmarks.

It "speaks" a speech-like signal (a voiced harmonic series with syllable-rate amplitude modulation)
whose length follows the text, at 24 kHz like the GPU engines. Its first-chunk delay and its
real-time factor are settable, so the load test can prove that a slow engine shows up as underruns.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator

import numpy as np

from tts_core.audio.arrays import FloatAudio
from tts_core.engines.base import Engine, SpeechRequest
from tts_core.engines.offloop import PrioritySlots, slot_priority


def speechlike(duration_s: float, rate: int, seed: int = 0, f0: float = 130.0) -> FloatAudio:
    """Voiced harmonics of a gliding f0 with 4 Hz syllable envelope, peak ~0.5."""
    rng = np.random.default_rng(seed)
    n = max(1, int(duration_s * rate))
    t = np.arange(n) / rate
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    harmonics = sum((0.6**k) * np.sin(k * phase) for k in range(1, 12))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6))
    signal = harmonics * envelope
    audio: FloatAudio = (0.5 * signal / max(1e-9, np.abs(signal).max())).astype(np.float32)
    return audio


class SyntheticEngine(Engine):
    """Speech-like audio, ``seconds_per_char`` long per character of text."""

    name = "synthetic"
    supports_cloning = True  # accepts any reference voice (ignores its audio)

    def __init__(
        self,
        *,
        sample_rate: int = 24000,
        chunk_ms: float = 80.0,
        first_chunk_delay_s: float = 0.0,
        realtime_factor: float = 0.0,
        seconds_per_char: float = 0.06,
        max_concurrency: int | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.chunk_ms = chunk_ms
        self.first_chunk_delay_s = first_chunk_delay_s
        self.realtime_factor = realtime_factor
        """Seconds of wall time per second of audio (0 = instant, 1.5 = slower than real time)."""
        self.seconds_per_char = seconds_per_char
        self._busy = 0
        self.slots = PrioritySlots(max_concurrency) if max_concurrency else None
        """Like an in-process model's engine slots (tts_core/engines/offloop.py): with
        ``max_concurrency`` set, utterances beyond it wait, earliest deadline first."""

    def builtin_voices(self) -> list[str]:
        return ["synthetic"]

    @property
    def busy_slots(self) -> int:
        return self._busy

    async def load(self) -> None:
        return None

    async def _stream(self, request: SpeechRequest) -> AsyncGenerator[FloatAudio, None]:
        seed = int.from_bytes(hashlib.sha1(request.text.encode()).digest()[:4], "little")
        audio = speechlike(len(request.text) * self.seconds_per_char / request.preset.speed,
                           self.sample_rate, seed=seed)
        step = max(1, int(self.sample_rate * self.chunk_ms / 1000))
        priority = slot_priority(request.slot_deadline())
        if self.slots is not None:
            await self.slots.acquire(priority)
        self._busy += 1
        holding = True
        try:
            if self.first_chunk_delay_s:
                await asyncio.sleep(self.first_chunk_delay_s)
            for start in range(0, audio.size, step):
                chunk = audio[start : start + step]
                if self.realtime_factor:
                    await asyncio.sleep(chunk.size / self.sample_rate * self.realtime_factor)
                else:
                    await asyncio.sleep(0)
                yield chunk
                if self.slots is not None and self.slots.outranked(priority):
                    holding = False  # background work hands the slot to a live request
                    self._busy -= 1
                    self.slots.release()
                    await self.slots.acquire(priority)
                    self._busy += 1
                    holding = True
        finally:
            if holding:
                self._busy -= 1
                if self.slots is not None:
                    self.slots.release()
