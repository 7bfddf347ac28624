"""The Chatterbox adapter against a stand-in model (tests/chatterbox_standin.py): no torch, no weights.

What the real model would do differently (speech instead of tones, GPU time) does not matter here;
what matters is how the adapter drives a model that keeps its voice as mutable state.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from pathlib import Path

import numpy as np
import pytest

from tests.chatterbox_standin import (
    SR,
    StandinChatterboxTTS,
    StandinFixedFadeTTS,
    StandinLoader,
    StandinStreamingTTS,
    estimate_freq,
    make_checkpoint,
    tone,
)
from tests.conftest import eventually
from tts_core.audio.seams import SeamJoiner
from tts_core.engines import EngineError, SpeechRequest, UnsupportedVoiceError, create_engine
from tts_core.engines import chatterbox as chatterbox_module
from tts_core.engines.chatterbox import (
    ChatterboxEngine,
    check_checkpoint,
    chunk_size_for,
    loader_weight_formats,
    resolve_devices,
)
from tts_core.presets import Preset, load_presets
from tts_core.voices import Voice

PRESETS = load_presets()
BALANCED = PRESETS.get("balanced")
REALTIME = PRESETS.get("realtime")  # chunk_size 12: several chunks per utterance
LONG_TEXT = "This sentence is long enough to come back from the model in several streamed chunks."


def make_voice(voice_id: str, freq: float, rate: int = 16000) -> Voice:
    return Voice(id=voice_id, audio=tone(freq, 1.5, rate), sample_rate=rate)


def make_engine(tmp_path: Path, loader: StandinLoader | None = None, **options: object) -> ChatterboxEngine:
    options.setdefault("device", "cpu")
    options.setdefault("warmup_on_load", False)
    ckpt = tmp_path / "ckpt"
    if not ckpt.exists():
        make_checkpoint(ckpt)
    return ChatterboxEngine(ckpt, model_loader=loader or StandinLoader(), **options)  # type: ignore[arg-type]


async def speak(engine: ChatterboxEngine, text: str, voice: Voice | None = None, *,
                preset: Preset = REALTIME, first_in_turn: bool = False) -> list[np.ndarray]:
    request = SpeechRequest(text=text, voice_id=voice.id if voice else "default", preset=preset,
                            voice=voice, first_in_turn=first_in_turn)
    async with aclosing(engine.stream(request)) as chunks:
        return [chunk async for chunk in chunks]


# ---- (1) one synthesis per replica: conditioning never mixes --------------------------------------
async def test_two_cloned_voices_at_once_each_keep_their_own_conditioning(tmp_path: Path) -> None:
    # The stand-in reads model.conds afresh for every chunk, slowly: had the second call set its
    # voice on the model while the first was mid-utterance, the first's later chunks would change pitch.
    loader = StandinLoader(chunk_delay_s=0.01)
    engine = make_engine(tmp_path, loader, replicas=1)
    alice, bob = make_voice("alice", 200), make_voice("bob", 320)
    a, b = await asyncio.gather(speak(engine, LONG_TEXT, alice), speak(engine, LONG_TEXT, bob))
    assert len(a) >= 4 and len(b) >= 4
    assert [round(estimate_freq(c, SR), -1) for c in a] == [200] * len(a)
    assert [round(estimate_freq(c, SR), -1) for c in b] == [320] * len(b)
    await engine.aclose()


async def test_replicas_synthesise_in_parallel_each_with_its_own_voice(tmp_path: Path) -> None:
    loader = StandinLoader(chunk_delay_s=0.01)
    engine = make_engine(tmp_path, loader, replicas=2)
    alice, bob = make_voice("alice", 200), make_voice("bob", 320)
    started = asyncio.Event()

    async def watch() -> int:
        peak = 0
        while not started.is_set():
            peak = max(peak, engine.busy_slots)
            await asyncio.sleep(0.002)
        return peak

    watcher = asyncio.create_task(watch())
    a, b = await asyncio.gather(speak(engine, LONG_TEXT, alice), speak(engine, LONG_TEXT, bob))
    started.set()
    assert await watcher == 2  # both replicas busy at once
    assert {call["model"] for call in loader.stats.calls} == {id(m) for m in loader.models}
    assert all(round(estimate_freq(c, SR), -1) == 200 for c in a)
    assert all(round(estimate_freq(c, SR), -1) == 320 for c in b)
    await engine.aclose()


# ---- (2) a voice's conditioning is prepared once ------------------------------------------------
async def test_a_voice_is_prepared_once_and_reloaded_from_disk_after_a_restart(tmp_path: Path) -> None:
    loader = StandinLoader(prepare_delay_s=0.02)
    engine = make_engine(tmp_path, loader, replicas=2)
    alice = make_voice("alice", 200)
    presets = [BALANCED, PRESETS.get("expressive"), PRESETS.get("fast"), REALTIME]
    # first uses at once on both replicas, then one after another, with presets of other emotion
    await asyncio.gather(*(speak(engine, f"Hello number {i}.", alice, preset=p)
                           for i, p in enumerate(presets)))
    for i in range(4):
        await speak(engine, f"Again {i}.", alice, preset=presets[i])
    assert loader.stats.prepare_calls == 1
    assert {call["emotion_adv"] for call in loader.stats.calls} == {0.5, 0.8}  # preset's, per call
    cached = list((tmp_path / "ckpt" / "conds").glob("alice-*.pt"))
    assert len(cached) == 1
    # calls apply their preset's emotion to a copy: the shared cached conditioning stays as prepared
    await speak(engine, "Excited now!", alice, preset=PRESETS.get("expressive"))
    shared = engine.conditioning.get(alice, "cpu", prepare=lambda path: pytest.fail("prepared again"))
    assert shared.t3.emotion_adv[0, 0, 0] == 0.5
    await engine.aclose()

    restarted_loader = StandinLoader()
    restarted = make_engine(tmp_path, restarted_loader, replicas=1)
    chunks = await speak(restarted, "After the restart.", alice)
    assert restarted_loader.stats.prepare_calls == 0
    assert restarted_loader.stats.cond_loads == 1
    assert all(round(estimate_freq(c, SR), -1) == 200 for c in chunks)

    # the same id with other reference audio is another voice: prepared anew, never the old file
    await speak(restarted, "New audio.", make_voice("alice", 260))
    assert restarted_loader.stats.prepare_calls == 1
    assert len(list((tmp_path / "ckpt" / "conds").glob("alice-*.pt"))) == 2
    await restarted.aclose()


async def test_an_unwritable_cache_dir_still_prepares_once_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    loader = StandinLoader()
    engine = make_engine(tmp_path, loader, conds_dir=blocker / "conds")
    alice = make_voice("alice", 200)
    for i in range(3):
        await speak(engine, f"Try {i}.", alice)
    assert loader.stats.prepare_calls == 1
    await engine.aclose()


# ---- (3) seams ---------------------------------------------------------------------------------
def rms_db(audio: np.ndarray, window: int = 240, hop: int = 24) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(audio, window)[::hop]
    return 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-12)


def seam_report(chunks: list[np.ndarray], steady: np.ndarray) -> tuple[float, float]:
    """(deepest RMS dip in dB around any seam, biggest sample step at a seam / the tone's own)."""
    audio = np.concatenate(chunks)
    seams = np.cumsum([c.size for c in chunks])[:-1]
    assert seams.size >= 2
    reference = float(np.min(rms_db(steady)))  # the tone's own envelope ripple is not a dip
    own_step = float(np.max(np.abs(np.diff(steady))))
    dips, steps = [], []
    for s in seams:
        around = audio[s - 720 : s + 720]  # +-30 ms
        dips.append(reference - float(np.min(rms_db(around))))
        steps.append(float(np.max(np.abs(np.diff(audio[s - 48 : s + 48])))) / own_step)
    return max(dips), max(steps)


async def test_streamed_chunks_join_without_a_dip_or_a_click(tmp_path: Path) -> None:
    # The fork fades every chunk in unless told not to; and each chunk starts with a phase jump.
    loader = StandinLoader(StandinStreamingTTS, phase_jump=0.6)
    engine = make_engine(tmp_path, loader)
    voice = make_voice("alice", 200)
    chunks = await speak(engine, LONG_TEXT, voice)
    assert loader.stats.calls[-1]["fade_duration"] == 0.0
    assert loader.stats.calls[-1]["print_metrics"] is False
    dip_db, step = seam_report(chunks, tone(200, 0.5))
    assert dip_db < 1.0, f"level dips {dip_db:.2f} dB at a seam"
    assert step < MAX_STEP, f"a seam jumps {step:.2f}x the tone's steepest step"
    await engine.aclose()


async def test_a_model_that_always_fades_chunks_in_is_joined_without_a_dip(tmp_path: Path) -> None:
    loader = StandinLoader(StandinFixedFadeTTS)
    engine = make_engine(tmp_path, loader)
    chunks = await speak(engine, LONG_TEXT, make_voice("alice", 200))
    assert "fade_duration" not in loader.stats.calls[-1] or loader.stats.calls[-1]["fade_duration"] == 0.02
    dip_db, step = seam_report(chunks, tone(200, 0.5))
    assert dip_db < 1.0, f"level dips {dip_db:.2f} dB at a seam"
    assert step < MAX_STEP, f"a seam jumps {step:.2f}x the tone's steepest step"
    await engine.aclose()


def fork_chunks(freq: float, n_chunks: int, size: int, fade_s: float, phase_jump: float) -> list[np.ndarray]:
    out = []
    for i in range(n_chunks):
        t = (i * size + np.arange(size)) / SR
        chunk = (0.5 * np.sin(2 * np.pi * freq * t + phase_jump * i)).astype(np.float32)
        n = int(fade_s * SR)
        if n:
            chunk[:n] *= np.linspace(0.0, 1.0, n, dtype=np.float32)
        out.append(chunk)
    return out


MAX_STEP = 2.5
"""No sample step at a seam beyond 2.5x the tone's own steepest (plain concatenation: 8-30x)."""


@pytest.mark.parametrize("phase_jump", [0.0, 0.6])
@pytest.mark.parametrize("freq", [120.0, 200.0, 440.0])
def test_the_seam_measure_sees_the_forks_dip_and_the_joiner_removes_it(freq: float,
                                                                       phase_jump: float) -> None:
    raw = fork_chunks(freq, 5, 4811, 0.02, phase_jump)
    dip_db, step = seam_report(raw, tone(freq, 0.5))
    assert dip_db > 6.0 and step > 5.0  # plain concatenation: a dip and a click per seam
    joiner = SeamJoiner(SR, fade_in_s=0.02)
    joined = [joiner.join(c) for c in raw]
    dip_db, step = seam_report(joined, tone(freq, 0.5))
    assert dip_db < 1.0 and step < MAX_STEP, (dip_db, step)


def test_the_joiner_removes_a_step_without_changing_the_level() -> None:
    raw = fork_chunks(300.0, 5, 4800, 0.0, 1.2)
    dip_db, step = seam_report(raw, tone(300, 0.5))
    assert step > 5.0
    joiner = SeamJoiner(SR)
    joined = [joiner.join(c) for c in raw]
    dip_db, step = seam_report(joined, tone(300, 0.5))
    assert dip_db < 1.0 and step < MAX_STEP, (dip_db, step)
    np.testing.assert_array_equal(joined[0], raw[0])  # the utterance's start is untouched


# ---- (4) checkpoint files ----------------------------------------------------------------------
async def test_missing_checkpoint_files_are_named_in_one_clear_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "ve.safetensors").write_bytes(b"x")
    engine = ChatterboxEngine(ckpt, device="cpu", model_loader=StandinLoader())
    with pytest.raises(EngineError) as err:
        await engine.load()
    message = str(err.value)
    for name in ("tokenizer.json", "t3_cfg.safetensors or t3_cfg.pt", "s3gen.safetensors or s3gen.pt"):
        assert name in message
    assert "ve.safetensors or" not in message  # present: not reported
    assert "huggingface-cli download ResembleAI/chatterbox" in message


def test_pt_weights_for_a_loader_that_reads_safetensors_say_so(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", fmt="pt")
    assert check_checkpoint(ckpt, ("safetensors", "pt")) == "pt"
    with pytest.raises(EngineError, match=r"missing ve.safetensors.*it has ve.pt.*loads safetensors"):
        check_checkpoint(ckpt, ("safetensors",))
    with pytest.raises(EngineError, match="does not exist"):
        check_checkpoint(tmp_path / "nowhere", ("safetensors",))


def _from_local_0_1_7(ckpt_dir, device):  # type: ignore[no-untyped-def]  # the lines that matter, verbatim
    ve.load_state_dict(load_file(ckpt_dir / "ve.safetensors"))  # type: ignore[name-defined] # noqa: F821


def _from_local_fork(ckpt_dir, device):  # type: ignore[no-untyped-def]
    ve.load_state_dict(torch.load(ckpt_dir / "ve.pt", map_location=map_location))  # type: ignore[name-defined] # noqa: F821


def test_the_weight_format_is_read_from_the_installed_loader() -> None:
    assert loader_weight_formats(_from_local_0_1_7) == ("safetensors",)
    assert loader_weight_formats(_from_local_fork) == ("pt",)
    assert loader_weight_formats(len) == ("safetensors", "pt")  # no source: accept either


async def test_a_checkpoint_without_conds_pt_has_no_builtin_voice_but_clones(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "ckpt", builtin_freq=None)
    engine = make_engine(tmp_path, warmup_on_load=True)
    await engine.load()
    assert engine.builtin_voices() == [] and engine.last_warmup_ms == {}
    with pytest.raises(UnsupportedVoiceError):
        await speak(engine, "Hello.")
    assert await speak(engine, "Hello.", make_voice("alice", 200))
    await engine.aclose()


# ---- (5) warmup --------------------------------------------------------------------------------
async def test_warmup_runs_on_every_replica_and_times_each(tmp_path: Path) -> None:
    loader = StandinLoader()
    engine = make_engine(tmp_path, loader, replicas=3, warmup_on_load=True)
    await engine.load()  # warms the built-in voice on each replica
    assert set(engine.last_warmup_ms) == {"cpu#0", "cpu#1", "cpu#2"}
    assert all(ms > 0 for ms in engine.last_warmup_ms.values())
    assert sorted(call["model"] for call in loader.stats.calls) == sorted(id(m) for m in loader.models)

    before = len(loader.stats.calls)
    alice = make_voice("alice", 200)
    targets = await engine.warmup("alice", BALANCED, alice)  # /warmup with a cloned voice
    assert set(targets) == {"cpu#0", "cpu#1", "cpu#2"} and all(ms > 0 for ms in targets.values())
    warm_calls = loader.stats.calls[before:]
    assert sorted(call["model"] for call in warm_calls) == sorted(id(m) for m in loader.models)
    assert loader.stats.prepare_calls == 1
    with pytest.raises(UnsupportedVoiceError):
        await engine.warmup("nobody", BALANCED)
    await engine.aclose()


async def test_warmup_waits_for_a_busy_replica_instead_of_sharing_it(tmp_path: Path) -> None:
    loader = StandinLoader(chunk_delay_s=0.01)
    engine = make_engine(tmp_path, loader, replicas=1)
    alice, bob = make_voice("alice", 200), make_voice("bob", 320)
    call, _ = await asyncio.gather(speak(engine, LONG_TEXT, alice), engine.warmup("bob", BALANCED, bob))
    assert all(round(estimate_freq(c, SR), -1) == 200 for c in call)
    await engine.aclose()


# ---- (6) cancelling ---------------------------------------------------------------------------
async def test_cancelling_an_utterance_frees_its_replica_within_one_chunk(tmp_path: Path) -> None:
    loader = StandinLoader(chunk_delay_s=0.03)
    engine = make_engine(tmp_path, loader, replicas=1)
    request = SpeechRequest(text=LONG_TEXT * 3, voice_id="default", preset=REALTIME)
    stream = engine.stream(request)
    await anext(stream)
    await stream.aclose()
    await eventually(lambda: engine.busy_slots == 0)
    assert loader.stats.closed_on_start_thread == [True]  # closed at once, where it ran
    assert loader.stats.chunks <= 2  # the chunk in flight at most, no further one
    assert engine.stats.cancelled == 1
    assert await speak(engine, "Next caller.")  # the replica serves the next utterance
    await engine.aclose()


async def test_a_caller_cancelled_while_waiting_for_a_replica_leaves_the_pool_intact(tmp_path: Path) -> None:
    loader = StandinLoader(chunk_delay_s=0.01)
    engine = make_engine(tmp_path, loader, replicas=1)
    await engine.load()
    busy = asyncio.create_task(speak(engine, LONG_TEXT))
    await eventually(lambda: engine.busy_slots == 1)
    waiting = asyncio.create_task(speak(engine, "I give up."))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert await busy
    assert await speak(engine, "Still served.")
    assert engine.busy_slots == 0
    await engine.aclose()


async def test_a_contended_replica_goes_to_the_earliest_deadline(tmp_path: Path) -> None:
    loader = StandinLoader(chunk_delay_s=0.01)
    engine = make_engine(tmp_path, loader, replicas=1)
    await engine.load()
    order: list[str] = []

    async def utter(text: str, deadline: float | None) -> None:
        request = SpeechRequest(text=text, voice_id="default", preset=REALTIME, deadline=deadline)
        async with aclosing(engine.stream(request)) as chunks:
            async for _ in chunks:
                pass
        order.append(text)

    busy = asyncio.create_task(utter(LONG_TEXT, None))
    await eventually(lambda: engine.busy_slots == 1)
    now = time.monotonic()
    late = asyncio.create_task(utter("Later.", now + 5))
    await eventually(lambda: len(engine._pool._waiters) == 1, what="the later request queued first")
    urgent = asyncio.create_task(utter("Now.", now))
    await asyncio.gather(busy, late, urgent)
    assert order == [LONG_TEXT, "Now.", "Later."]
    await engine.aclose()


# ---- streaming options, devices, the non-streaming package -----------------------------------------
async def test_adaptive_uses_the_small_first_chunk_for_the_first_segment_of_a_turn(tmp_path: Path) -> None:
    loader = StandinLoader()
    engine = make_engine(tmp_path, loader)
    adaptive = PRESETS.get("adaptive")
    await speak(engine, "First.", preset=adaptive, first_in_turn=True)
    await speak(engine, "Then the rest.", preset=adaptive)
    await speak(engine, "Balanced.", preset=BALANCED, first_in_turn=True)
    assert [c["chunk_size"] for c in loader.stats.calls] == [12, 24, 25]
    assert chunk_size_for(adaptive, True) == 12 and chunk_size_for(adaptive, False) == 24
    call = loader.stats.calls[-1]
    assert (call["exaggeration"], call["cfg_weight"], call["temperature"]) == (0.5, 0.5, 0.8)
    assert {"s3gen_steps"} <= engine.stats.ignored_params
    await engine.aclose()


async def test_without_generate_stream_each_segment_is_one_generate_call(tmp_path: Path) -> None:
    loader = StandinLoader(StandinChatterboxTTS)
    engine = make_engine(tmp_path, loader)
    chunks = await speak(engine, "A segment.", make_voice("alice", 200), preset=PRESETS.get("expressive"))
    assert len(chunks) == 1 and chunks[0].dtype == np.float32
    call = loader.stats.calls[-1]
    assert call["kind"] == "generate" and call["exaggeration"] == 0.8
    assert {"chunk_size", "s3gen_steps"} <= engine.stats.ignored_params
    await engine.aclose()


def test_devices_resolve_as_documented() -> None:
    assert resolve_devices("cpu", 2) == ["cpu"]
    assert resolve_devices("auto", 0) == ["cpu"]
    assert resolve_devices("auto", 2) == ["cuda:0", "cuda:1"]
    assert resolve_devices("cuda", 1) == ["cuda:0"]
    assert resolve_devices("cuda:1", 2) == ["cuda:1"]
    with pytest.raises(EngineError, match="CUDA device"):
        resolve_devices("cuda:1", 1)
    with pytest.raises(EngineError, match="CUDA device"):
        resolve_devices("cuda", 0)
    with pytest.raises(EngineError, match="unknown device"):
        resolve_devices("tpu", 1)


async def test_auto_puts_replicas_on_every_gpu_and_spreads_calls(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chatterbox_module, "_cuda_device_count", lambda: 2)
    loader = StandinLoader(chunk_delay_s=0.01)
    engine = make_engine(tmp_path, loader, device="auto", replicas=2)
    await engine.load()
    assert engine.devices == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    await asyncio.gather(speak(engine, LONG_TEXT), speak(engine, LONG_TEXT))
    used = {m.device for m in loader.models if any(c["model"] == id(m) for c in loader.stats.calls)}
    assert used == {"cuda:0", "cuda:1"}
    await engine.aclose()


def test_the_engine_is_created_by_name_without_torch(tmp_path: Path) -> None:
    engine = create_engine("chatterbox", checkpoint_dir=make_checkpoint(tmp_path / "c"), device="cpu",
                           replicas=2)
    assert isinstance(engine, ChatterboxEngine) and engine.sample_rate == 24000
    assert engine.builtin_voices() == ["default"]
    with pytest.raises(EngineError, match="checkpoint directory"):
        ChatterboxEngine(None)


# ---- through the bridge ---------------------------------------------------------------------------
@pytest.mark.slow
async def test_a_call_through_the_bridge_speaks_a_cloned_voice_with_valid_frames(tmp_path: Path) -> None:
    import httpx

    from telephony.testing.bridge_harness import OPERATOR_HEADERS, running_bridge
    from tests.test_call_e2e import open_call
    from tts_core.engines.conditioning import write_wav

    voices_dir = tmp_path / "voices"
    voices_dir.mkdir()
    write_wav(voices_dir / "alice.wav", tone(200, 1.5, 16000), 16000)
    loader = StandinLoader()
    engine = make_engine(tmp_path, loader, replicas=2, warmup_on_load=True)
    async with running_bridge(engine=engine, voices_dir=voices_dir) as rb, httpx.AsyncClient() as client:
        warm = await client.post(f"{rb.base_url}/warmup", json={"voice": "alice"},
                                 headers=OPERATOR_HEADERS)
        assert warm.status_code == 200, warm.text
        assert set(warm.json()["targets"]) == {"cpu#0", "cpu#1"}
        call = await open_call(rb, client, "CA4242", "?voice=alice&greeting=Hello%20caller.")
        assert await call.wait_for(lambda: call.played_utterances(), timeout=10)
        await call.hang_up()
    assert call.stats.invalid == []
    utterance = call.played_utterances()[0]
    assert utterance.frames >= 10 and utterance.underruns == 0
    assert any(name.endswith("-end") for name in call.stats.mark_names)
    assert any("caller" in c["text"] for c in loader.stats.calls)  # the greeting, by this engine
    assert loader.stats.prepare_calls == 1  # warmup on both replicas and the call: prepared once


def test_settings_build_the_engine_with_its_options(tmp_path: Path) -> None:
    from telephony.config import settings_from_env
    from telephony.services import build_engine

    ckpt, voices = make_checkpoint(tmp_path / "ckpt"), tmp_path / "voices"
    voices.mkdir()
    env = {"VOICE_BRIDGE_CHECKPOINT_DIR": str(ckpt), "VOICE_BRIDGE_DEVICE": "cuda:1",
           "VOICE_BRIDGE_ENGINE_REPLICAS": "3", "VOICE_BRIDGE_VOICES_DIR": str(voices)}
    settings = settings_from_env(env, insecure_dev=True, engine="chatterbox")
    engine = build_engine(settings)
    assert isinstance(engine, ChatterboxEngine)
    assert (engine.checkpoint_dir, engine.device, engine.replicas) == (ckpt, "cuda:1", 3)
    assert engine.conditioning.cache_dir == voices / ".chatterbox-conds"


@pytest.mark.slow
async def test_a_checkpoint_that_cannot_load_stops_the_server_with_the_files_named(tmp_path: Path) -> None:
    from telephony.config import ConfigError, settings_from_env
    from telephony.services import Bridge

    ckpt = tmp_path / "empty"
    ckpt.mkdir()
    settings = settings_from_env({"VOICE_BRIDGE_CHECKPOINT_DIR": str(ckpt)}, insecure_dev=True,
                                 engine="chatterbox")
    engine = ChatterboxEngine(ckpt, device="cpu", model_loader=StandinLoader())
    with pytest.raises(ConfigError, match=r"VOICE_BRIDGE_ENGINE=chatterbox: .*missing tokenizer.json"):
        await Bridge.start(settings, engine=engine)
