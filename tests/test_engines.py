"""The engine layer: the Engine contract, the off-loop runner, Piper and the synthetic engine."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import numpy as np
import pytest

from tests.conftest import eventually
from tts_core.engines import EngineError, SpeechRequest, UnsupportedVoiceError, create_engine
from tts_core.engines.base import Engine
from tts_core.engines.offloop import OffloopRunner
from tts_core.engines.piper import BUILTIN_VOICE, PiperEngine
from tts_core.engines.synthetic import SyntheticEngine
from tts_core.presets import Preset, load_presets
from tts_core.voices import Voice

PRESETS = load_presets()
BALANCED = PRESETS.get("balanced")
LONG_TEXT = " ".join(
    f"This is sentence number {n}, which keeps the engine busy for a little while."
    for n in range(1, 13)
)


def request(text: str, voice_id: str = BUILTIN_VOICE, preset: Preset = BALANCED, **kw) -> SpeechRequest:
    return SpeechRequest(text=text, voice_id=voice_id, preset=preset, **kw)


# ---- Piper --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def piper_voice():
    """The Piper model, loaded once per module (loading takes ~0.5 s)."""
    engine = PiperEngine()
    engine._load_blocking()
    yield engine._voice
    engine._runner.shutdown()


@pytest.fixture
async def piper(piper_voice) -> AsyncIterator[PiperEngine]:
    """A fresh engine (own runner, slots, stats) around the shared model.

    The runner's slots are bound to the event loop that first uses them, and every test has its own
    loop, so engines are per test; only the loaded model is shared.
    """
    engine = PiperEngine()
    engine._voice = piper_voice
    engine.sample_rate = int(piper_voice.config.sample_rate)
    yield engine
    await engine.aclose()


class SentenceCounter:
    """Wraps PiperVoice.synthesize to count the sentences it actually computes."""

    def __init__(self, voice) -> None:
        self._synthesize = voice.synthesize
        self.computed: list[float] = []  # seconds each sentence took
        self.closed = threading.Event()

    def __call__(self, *args, **kwargs) -> Iterator:
        try:
            chunks = iter(self._synthesize(*args, **kwargs))
            while True:
                started = time.monotonic()
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                self.computed.append(time.monotonic() - started)
                yield chunk
        finally:
            self.closed.set()


@pytest.fixture
def sentences(piper_voice, monkeypatch) -> SentenceCounter:
    counter = SentenceCounter(piper_voice)
    monkeypatch.setattr(piper_voice, "synthesize", counter)
    return counter


@pytest.mark.slow
async def test_piper_streams_two_sentences_as_non_silent_float32_chunks(piper: PiperEngine) -> None:
    chunks = [c async for c in piper.stream(request("Hello there. How can I help you today?"))]
    assert piper.sample_rate == 22050
    assert len(chunks) >= 2
    for chunk in chunks:
        assert chunk.dtype == np.float32
        assert chunk.ndim == 1
        assert float(np.sqrt(np.mean(chunk**2))) > 0.01, "each sentence carries audible speech"
        assert np.abs(chunk).max() <= 1.0
    seconds = sum(c.size for c in chunks) / piper.sample_rate
    assert 1.0 < seconds < 6.0
    assert piper.stats.utterances == 1
    assert piper.stats.cancelled == 0
    assert piper.busy_slots == 0


@pytest.mark.slow
async def test_cancelling_the_consumer_stops_piper_within_one_chunk(
    piper: PiperEngine, sentences: SentenceCounter
) -> None:
    first = asyncio.Event()
    received = 0

    async def consume() -> None:
        nonlocal received
        async for _ in piper.stream(request(LONG_TEXT)):
            received += 1
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    assert piper.busy_slots == 1
    computed_at_cancel = len(sentences.computed)
    task.cancel()
    cancel_took = await eventually(task.done, timeout=1.0)
    assert task.cancelled()
    assert cancel_took < 0.2, "the consumer is released at once, not after the chunk in flight"

    freed_after = await eventually(lambda: piper.busy_slots == 0)
    assert freed_after < max(sentences.computed) + 0.5, "slot frees once the in-flight chunk ends"
    assert sentences.closed.wait(1.0), "the sentence generator is closed"
    # closed: its ``finally`` ran, so the count below is final (no wait for "nothing more")
    assert len(sentences.computed) <= computed_at_cancel + 1  # at most the chunk in flight
    assert len(sentences.computed) < LONG_TEXT.count(".")
    assert received == 1
    assert piper.stats.cancelled == 1
    assert piper.stats.failures == 0


@pytest.mark.slow
async def test_closing_the_iterator_early_frees_the_piper_slot(
    piper: PiperEngine, sentences: SentenceCounter
) -> None:
    async with aclosing(piper.stream(request(LONG_TEXT))) as chunks:
        async for _ in chunks:
            break
    # Freed by the close itself, not later by the garbage collector finalising a generator.
    assert piper.busy_slots == 0
    assert sentences.closed.wait(1.0)  # its ``finally`` ran: the count below is final
    assert len(sentences.computed) == 1, "nothing is computed after the consumer walks away"
    assert piper.stats.cancelled == 1


async def test_piper_rejects_an_unknown_voice_and_cloning(piper: PiperEngine) -> None:
    with pytest.raises(UnsupportedVoiceError, match="no built-in voice 'alice'"):
        await anext(piper.stream(request("Hello.", voice_id="alice")))
    reference = Voice(id="alice", audio=np.zeros(24000, dtype=np.float32), sample_rate=24000)
    with pytest.raises(UnsupportedVoiceError, match="cannot clone"):
        await anext(piper.stream(request("Hello.", voice_id="alice", voice=reference)))
    assert piper.stats.utterances == 0
    assert piper.busy_slots == 0


@pytest.mark.slow
async def test_piper_reports_each_ignored_preset_parameter_once(
    piper: PiperEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tts_core.engines.base")
    for _ in range(2):
        [c async for c in piper.stream(request("Hi."))]
    assert piper.stats.ignored_params == {"exaggeration", "cfg_weight", "chunk_size", "s3gen_steps"}
    [c async for c in piper.stream(request("Hi.", preset=PRESETS.get("adaptive")))]
    assert piper.stats.ignored_params == {
        "exaggeration", "cfg_weight", "chunk_size", "s3gen_steps",
        "first_chunk_size", "continuation_chunk_size",
    }  # fmt: skip
    notes = [r.getMessage() for r in caplog.records if "ignores preset parameter" in r.getMessage()]
    assert len(notes) == 2, notes  # once for balanced's extras, once for adaptive's new ones
    assert "speed" not in piper.stats.ignored_params
    assert "temperature" not in piper.stats.ignored_params


async def test_create_engine_builds_piper_and_synthetic_by_name() -> None:
    assert isinstance(create_engine("piper"), PiperEngine)
    assert isinstance(create_engine("synthetic", sample_rate=16000), SyntheticEngine)
    with pytest.raises(ValueError, match="unknown engine 'nope'"):
        create_engine("nope")


# ---- OffloopRunner ----------------------------------------------------------------------------
class Activity:
    """Records how many fake inference calls run at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def work(self, seconds: float) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(seconds)
        with self._lock:
            self.running -= 1


def blocking_chunks(activity: Activity, count: int, seconds: float):
    def factory(cancel: threading.Event) -> Iterator[int]:
        for index in range(count):
            activity.work(seconds)
            yield index

    return factory


@pytest.mark.parametrize(("max_concurrency", "expected_peak"), [(1, 1), (2, 2)])
async def test_runner_bounds_concurrent_utterances(max_concurrency: int, expected_peak: int) -> None:
    runner = OffloopRunner(max_concurrency)
    activity = Activity()
    busy_seen: list[int] = []

    async def utterance() -> list[int]:
        items = []
        async for item in runner.iterate(blocking_chunks(activity, 3, 0.03)):
            busy_seen.append(runner.busy)
            items.append(item)
        return items

    try:
        results = await asyncio.gather(utterance(), utterance())
    finally:
        runner.shutdown()
    assert results == [[0, 1, 2], [0, 1, 2]]
    assert activity.peak == expected_peak
    assert max(busy_seen) == expected_peak
    assert runner.busy == 0


async def test_runner_slot_stays_busy_until_the_in_flight_chunk_finishes() -> None:
    runner = OffloopRunner(1)
    finish_chunk = threading.Event()
    chunk_started = threading.Event()
    computed: list[int] = []
    generator_closed = threading.Event()

    def factory(cancel: threading.Event) -> Iterator[int]:
        try:
            for index in range(10):
                if index == 1:
                    chunk_started.set()
                    finish_chunk.wait(5)  # a kernel that cannot be interrupted
                computed.append(index)
                yield index
        finally:
            generator_closed.set()

    async def consume() -> None:
        async for _ in runner.iterate(factory):
            pass

    try:
        task = asyncio.create_task(consume())
        await asyncio.to_thread(chunk_started.wait, 5)
        task.cancel()
        await eventually(task.done, timeout=1.0)
        assert runner.busy == 1, "the chunk in flight still holds the slot"

        finish_chunk.set()
        await eventually(lambda: runner.busy == 0)
        assert generator_closed.wait(1.0)
        assert computed == [0, 1], "no chunk is started after the cancel"

        # The slot really is free: the next utterance gets it.
        follow_up = [i async for i in runner.iterate(lambda cancel: iter([7, 8]))]
        assert follow_up == [7, 8]
    finally:
        finish_chunk.set()
        runner.shutdown()


async def test_runner_cancel_signals_the_generator() -> None:
    runner = OffloopRunner(1)
    seen: list[threading.Event] = []

    def factory(cancel: threading.Event) -> Iterator[int]:
        seen.append(cancel)
        yield from range(100)

    try:
        async with aclosing(runner.iterate(factory)) as items:
            async for _ in items:
                break
        assert seen[0].is_set()
        assert runner.busy == 0
    finally:
        runner.shutdown()


def test_runner_requires_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        OffloopRunner(0)


class FlakyEngine(Engine):
    """An engine whose blocking generator fails after its first chunk."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.runner = OffloopRunner(1, name="flaky")

    async def load(self) -> None:
        return None

    def builtin_voices(self) -> list[str]:
        return ["v"]

    @property
    def busy_slots(self) -> int:
        return self.runner.busy

    async def _stream(self, request: SpeechRequest) -> AsyncIterator[np.ndarray]:
        def chunks(cancel: threading.Event) -> Iterator[np.ndarray]:
            yield np.ones(100, dtype=np.float32)
            raise RuntimeError("CUDA out of memory")

        async for chunk in self.runner.iterate(chunks):
            yield chunk


async def test_generator_exception_reaches_the_caller_as_engine_error() -> None:
    engine = FlakyEngine()
    received = []
    with pytest.raises(EngineError, match="flaky synthesis failed: CUDA out of memory") as info:
        async for chunk in engine.stream(request("Hello.", voice_id="v")):
            received.append(chunk)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert len(received) == 1
    assert engine.stats.failures == 1
    assert engine.stats.cancelled == 0, "a failure is not a cancellation"
    await eventually(lambda: engine.busy_slots == 0, timeout=1.0)
    engine.runner.shutdown()


# ---- SyntheticEngine ------------------------------------------------------------------------------
async def synthetic_seconds(engine: SyntheticEngine, text: str, preset: Preset = BALANCED) -> float:
    chunks = [c async for c in engine.stream(request(text, voice_id="synthetic", preset=preset))]
    return sum(c.size for c in chunks) / engine.sample_rate


async def test_synthetic_duration_follows_text_length_and_speed() -> None:
    engine = SyntheticEngine(seconds_per_char=0.05)
    short = await synthetic_seconds(engine, "x" * 20)
    long = await synthetic_seconds(engine, "x" * 80)
    assert short == pytest.approx(1.0, abs=0.01)
    assert long == pytest.approx(4.0, abs=0.01)
    fast = await synthetic_seconds(engine, "x" * 80, preset=BALANCED.model_copy(update={"speed": 2.0}))
    assert fast == pytest.approx(2.0, abs=0.01)


async def test_synthetic_chunks_are_float32_at_the_configured_rate_and_size() -> None:
    engine = SyntheticEngine(sample_rate=16000, chunk_ms=40)
    chunks = [c async for c in engine.stream(request("Hello world.", voice_id="synthetic"))]
    assert all(c.dtype == np.float32 for c in chunks)
    assert {c.size for c in chunks[:-1]} == {640}
    assert engine.busy_slots == 0


async def test_synthetic_first_chunk_delay_is_honoured() -> None:
    engine = SyntheticEngine(first_chunk_delay_s=0.2)
    started = time.monotonic()
    async with aclosing(engine.stream(request("Hello.", voice_id="synthetic"))) as chunks:
        await anext(chunks)
        waited = time.monotonic() - started
    assert 0.2 <= waited < 0.35
    assert engine.busy_slots == 0
    assert engine.stats.cancelled == 1


async def test_synthetic_accepts_a_cloning_voice_and_rejects_unknown_builtins() -> None:
    engine = SyntheticEngine()
    reference = Voice(id="alice", audio=np.zeros(100, dtype=np.float32), sample_rate=24000)
    assert await synthetic_seconds_with_voice(engine, reference) > 0
    with pytest.raises(UnsupportedVoiceError):
        await anext(engine.stream(request("Hello.", voice_id="nobody")))


async def synthetic_seconds_with_voice(engine: SyntheticEngine, voice: Voice) -> float:
    chunks = [c async for c in engine.stream(request("Hello.", voice_id=voice.id, voice=voice))]
    return sum(c.size for c in chunks) / engine.sample_rate


async def test_empty_text_yields_nothing_and_counts_nothing() -> None:
    engine = SyntheticEngine()
    assert [c async for c in engine.stream(request("   ", voice_id="synthetic"))] == []
    assert engine.stats.utterances == 0
