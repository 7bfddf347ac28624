"""Chatterbox (Resemble AI) in process on PyTorch: 24 kHz, voices cloned from a few seconds of audio.

The optional ``chatterbox`` extra installs ``chatterbox-tts`` (or install the streaming fork,
``chatterbox-streaming``, which provides the same ``chatterbox`` package plus ``generate_stream``).
Nothing here imports torch or chatterbox until a model is loaded, so the adapter is tested without
either against a stand-in model with the same signatures (``tests/chatterbox_standin.py``).

The calls used, exactly as the packages define them:

* ``ChatterboxTTS.from_local(ckpt_dir, device)``: loads ``ve``, ``t3_cfg``, ``s3gen`` (``.safetensors``
  in chatterbox-tts >= 0.1.2, ``.pt`` in 0.1.1 and the streaming fork), ``tokenizer.json`` and, if
  present, ``conds.pt`` (the built-in voice). ``from_pretrained`` is never called: nothing downloads.
* ``model.prepare_conditionals(wav_fpath, exaggeration=0.5)`` sets ``model.conds`` (a ``Conditionals``
  with ``save(fpath)`` / ``Conditionals.load(fpath, map_location)``).
* ``model.generate(text, [repetition_penalty, min_p, top_p,] audio_prompt_path=None,
  exaggeration=0.5, cfg_weight=0.5, temperature=0.8)`` -> tensor (1, T) at ``model.sr``.
* fork: ``model.generate_stream(text, audio_prompt_path=None, exaggeration=0.5, cfg_weight=0.5,
  temperature=0.8, chunk_size=25, context_window=50, fade_duration=0.02, print_metrics=True)``
  yielding ``(audio_chunk (1, n) tensor, StreamingMetrics)``.

Because ``model.conds`` is the current voice, each replica serves one synthesis at a time
(``ReplicaPool``) and the voice's conditioning is set on the replica's thread right before generating.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator
from contextlib import aclosing
from pathlib import Path
from types import ModuleType
from typing import Protocol, TypeAlias, cast

import numpy as np

from tts_core.audio.arrays import FloatAudio
from tts_core.audio.seams import SeamJoiner
from tts_core.engines.base import Engine, EngineError, SpeechRequest, UnsupportedVoiceError
from tts_core.engines.conditioning import Conditionals, ConditioningCache
from tts_core.engines.replica_pool import Replica, ReplicaPool
from tts_core.presets import Preset
from tts_core.voices import Voice

log = logging.getLogger(__name__)

BUILTIN_VOICE = "default"
"""The checkpoint's own voice (``conds.pt``)."""
WEIGHT_STEMS = ("ve", "t3_cfg", "s3gen")
WEIGHT_FORMATS = ("safetensors", "pt")
TOKENIZER = "tokenizer.json"
BUILTIN_CONDS = "conds.pt"
FORK_FADE_S = 0.02
"""The streaming fork's per-chunk linear fade-in, undone where it cannot be switched off."""
PREPARE_EXAGGERATION = 0.5
"""Stored by prepare_conditionals; every generate call replaces it with the preset's value."""
FETCH_HINT = "fetch it once with: huggingface-cli download ResembleAI/chatterbox --local-dir DIR"


GenerationKwargs: TypeAlias = dict[str, float | bool]
"""Keyword arguments of ``generate`` / ``generate_stream`` (exaggeration, chunk_size, print_metrics...)."""


class ChatterboxModel(Protocol):
    """The calls this adapter makes on a loaded model (``ChatterboxTTS``, or the tests' stand-in)."""

    sr: int
    conds: Conditionals | None
    """The current voice: set before each synthesis (one synthesis per replica at a time)."""

    def prepare_conditionals(self, wav_fpath: str, exaggeration: float = ...) -> None: ...

    def generate(self, text: str, **kwargs: float | bool) -> object:
        """The whole utterance as a (1, T) tensor at ``sr``."""
        ...


class StreamingChatterboxModel(ChatterboxModel, Protocol):
    """The streaming fork's model (``Replica.info["stream"]`` says a model is one)."""

    def generate_stream(self, text: str, **kwargs: float | bool) -> Iterator[object]:
        """``(audio_chunk (1, n) tensor, StreamingMetrics)`` pairs (or bare chunks)."""
        ...


ChatterboxReplica: TypeAlias = Replica[ChatterboxModel, Conditionals]


class ModelLoader(Protocol):
    """How models and saved conditionings are loaded (the real package, or a test's stand-in)."""

    def weight_formats(self) -> tuple[str, ...]:
        """Weight file suffixes the loader reads, in order of preference."""
        ...

    def load_model(self, checkpoint_dir: Path, device: str) -> ChatterboxModel: ...

    def load_conditionals(self, path: Path, device: str) -> Conditionals: ...


class ChatterboxLoader:
    """The installed ``chatterbox`` package (chatterbox-tts or chatterbox-streaming)."""

    def _module(self) -> ModuleType:
        """``chatterbox.tts`` (untyped: its classes are described by the Protocols above)."""
        try:
            from chatterbox import tts
        except ImportError as exc:
            raise EngineError(
                "the chatterbox engine needs the chatterbox extra: install torch for your "
                "machine first, then pip install -e '.[chatterbox]' (see README, 'Chatterbox'); "
                f"import failed: {exc}") from exc
        module: ModuleType = tts
        return module

    def weight_formats(self) -> tuple[str, ...]:
        return loader_weight_formats(self._module().ChatterboxTTS.from_local)

    def load_model(self, checkpoint_dir: Path, device: str) -> ChatterboxModel:
        model: ChatterboxModel = self._module().ChatterboxTTS.from_local(checkpoint_dir, device)
        return model

    def load_conditionals(self, path: Path, device: str) -> Conditionals:
        conds: Conditionals = self._module().Conditionals.load(path, map_location=device)
        return conds


def loader_weight_formats(from_local: Callable[..., object]) -> tuple[str, ...]:
    """Which weight files the installed ``from_local`` opens: read from its source.

    chatterbox-tts switched from ``ve.pt`` to ``ve.safetensors`` after 0.1.1; the streaming fork still
    reads ``.pt``. Knowing which, a checkpoint holding only the other set fails with a clear message
    at start instead of a FileNotFoundError from inside the package.
    """
    try:
        source = inspect.getsource(from_local)
    except (OSError, TypeError):
        return WEIGHT_FORMATS
    found = tuple(fmt for fmt in WEIGHT_FORMATS if f"ve.{fmt}" in source)
    return found or WEIGHT_FORMATS


def check_checkpoint(checkpoint_dir: Path, formats: tuple[str, ...]) -> str:
    """The weight format to load from ``checkpoint_dir``; EngineError naming every missing file."""
    if not checkpoint_dir.is_dir():
        raise EngineError(f"Chatterbox checkpoint directory {checkpoint_dir} does not exist; {FETCH_HINT}")
    present = {p.name for p in checkpoint_dir.iterdir()}
    for fmt in formats:
        if all(f"{stem}.{fmt}" in present for stem in WEIGHT_STEMS) and TOKENIZER in present:
            return fmt
    missing = [TOKENIZER] if TOKENIZER not in present else []
    best = max(formats, key=lambda f: sum(f"{s}.{f}" in present for s in WEIGHT_STEMS))
    missing += [" or ".join(f"{s}.{f}" for f in formats) for s in WEIGHT_STEMS
                if f"{s}.{best}" not in present]
    others = [f"{s}.{f}" for f in WEIGHT_FORMATS if f not in formats for s in WEIGHT_STEMS
              if f"{s}.{f}" in present]
    note = (f" (it has {', '.join(others)}, but the installed chatterbox package loads "
            f"{'/'.join(formats)} weights)") if others else ""
    raise EngineError(f"Chatterbox checkpoint {checkpoint_dir} is missing {', '.join(missing)}{note}; "
                      f"{FETCH_HINT}")


def resolve_devices(device: str, cuda_count: int) -> list[str]:
    """``auto``: every visible GPU, else the CPU; ``cuda``: the first GPU; ``cuda:N``; ``cpu``."""
    if device == "cpu":
        return ["cpu"]
    if device == "auto":
        return [f"cuda:{i}" for i in range(cuda_count)] or ["cpu"]
    kind, _, number = device.partition(":")
    index = 0 if device == "cuda" else int(number) if number.isdigit() else -1
    if kind != "cuda" or index < 0:
        raise EngineError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if index >= cuda_count:
        raise EngineError(f"device {device} requested but {cuda_count} CUDA device(s) are visible "
                          "(is the CUDA build of torch installed and the GPU passed through?)")
    return [f"cuda:{index}"]


def _loaded(replica: ChatterboxReplica) -> ChatterboxModel:
    """The replica's model (``_load_replica`` sets it before the pool serves anything)."""
    if replica.model is None:
        raise EngineError(f"replica {replica.name} has no model loaded")
    return replica.model


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _accepted_params(fn: Callable[..., object]) -> frozenset[str] | None:
    """Keyword names ``fn`` takes; None if it takes ``**kwargs`` (anything goes)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def to_mono_float32(audio: object) -> FloatAudio:
    """A (1, T) torch tensor (or anything array-like) as a flat float32 numpy array."""
    for step in ("detach", "cpu", "numpy"):
        if hasattr(audio, step):
            audio = getattr(audio, step)()
    return np.asarray(audio, dtype=np.float32).reshape(-1)


class ChatterboxEngine(Engine):
    """Chatterbox on ``replicas`` model copies per device."""

    name = "chatterbox"
    supports_cloning = True

    def __init__(
        self,
        checkpoint_dir: str | Path | None,
        *,
        device: str = "auto",
        replicas: int = 1,
        model_loader: ModelLoader | None = None,
        conds_dir: str | Path | None = None,
        warmup_on_load: bool = True,
    ) -> None:
        super().__init__()
        if checkpoint_dir is None:
            raise EngineError("the chatterbox engine needs a checkpoint directory "
                              "(VOICE_BRIDGE_CHECKPOINT_DIR)")
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = device
        self.replicas = replicas
        self._loader: ModelLoader = model_loader or ChatterboxLoader()
        self.warmup_on_load = warmup_on_load
        self.conditioning = ConditioningCache(
            Path(conds_dir) if conds_dir is not None else self.checkpoint_dir / "conds",
            self._loader.load_conditionals)
        self.sample_rate = 24000
        self._pool: ReplicaPool[ChatterboxModel, Conditionals] | None = None
        self._load_lock = asyncio.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------
    def builtin_voices(self) -> list[str]:
        if self._pool is not None:
            has_builtin = self._pool.replicas[0].builtin_conds is not None
        else:
            has_builtin = (self.checkpoint_dir / BUILTIN_CONDS).is_file()
        return [BUILTIN_VOICE] if has_builtin else []

    @property
    def busy_slots(self) -> int:
        return self._pool.busy if self._pool is not None else 0

    @property
    def devices(self) -> list[str]:
        return [r.device for r in self._pool.replicas] if self._pool is not None else []

    @property
    def last_warmup_ms(self) -> dict[str, float]:
        """Each replica's latest warmup (ms), by ``device#index``; only replicas warmed so far."""
        if self._pool is None:
            return {}
        return {r.name: round(r.last_warmup_ms, 2) for r in self._pool.replicas
                if r.last_warmup_ms is not None}

    async def load(self) -> None:
        if self._pool is not None:
            return
        async with self._load_lock:
            if self._pool is not None:
                return
            # torch and chatterbox import slowly and the checkpoint is read from disk: off the loop.
            devices, fmt = await asyncio.to_thread(self._prepare_load)
            replicas: list[ChatterboxReplica] = [Replica(i, dev) for dev in devices
                                                 for i in range(self.replicas)]
            pool = ReplicaPool(replicas)
            try:
                # Each replica loads on its own thread: copies on different GPUs load in parallel.
                await _all(pool.run(r, functools.partial(self._load_replica, r)) for r in replicas)
            except BaseException:
                pool.shutdown()
                raise
            rates = {int(_loaded(r).sr) for r in replicas}
            if len(rates) != 1:
                pool.shutdown()
                raise EngineError(f"replicas disagree on the sample rate: {sorted(rates)}")
            self.sample_rate = rates.pop()
            self._pool = pool
            log.info("chatterbox: %d replica(s) on %s from %s (%s weights), %s",
                     len(replicas), ", ".join(devices), self.checkpoint_dir, fmt,
                     "streaming (generate_stream)" if replicas[0].info["stream"] is not None
                     else "segment by segment (generate)")
        if self.warmup_on_load and self.builtin_voices():
            await self.warmup(BUILTIN_VOICE, Preset(name="warmup"))

    def _prepare_load(self) -> tuple[list[str], str]:
        cuda_count = 0 if self.device == "cpu" else _cuda_device_count()
        devices = resolve_devices(self.device, cuda_count)
        fmt = check_checkpoint(self.checkpoint_dir, self._loader.weight_formats())
        if not (self.checkpoint_dir / BUILTIN_CONDS).is_file():
            log.warning("chatterbox: %s has no %s: no built-in voice, only cloned voices",
                        self.checkpoint_dir, BUILTIN_CONDS)
        return devices, fmt

    def _load_replica(self, replica: ChatterboxReplica) -> None:
        try:
            model = self._loader.load_model(self.checkpoint_dir, replica.device)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"cannot load Chatterbox from {self.checkpoint_dir} on "
                              f"{replica.device}: {exc}") from exc
        replica.model = model
        replica.builtin_conds = getattr(model, "conds", None)
        stream = getattr(model, "generate_stream", None)
        replica.info = {
            "stream": _accepted_params(stream) if callable(stream) else None,
            "generate": _accepted_params(model.generate),
        }

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    # ---- synthesis -------------------------------------------------------------------------------
    async def _stream(self, request: SpeechRequest) -> AsyncGenerator[FloatAudio, None]:
        await self.load()
        assert self._pool is not None
        if request.voice is None and self._pool.replicas[0].builtin_conds is None:
            raise UnsupportedVoiceError("this Chatterbox checkpoint has no built-in voice (conds.pt)")
        streaming = self._pool.replicas[0].info["stream"] is not None
        understood = {"exaggeration", "cfg_weight", "temperature"}
        if streaming:
            understood |= {"chunk_size", "first_chunk_size", "continuation_chunk_size"}
        self.note_ignored_params(request.preset, understood)

        def factory(replica: ChatterboxReplica, cancel: threading.Event) -> Iterator[FloatAudio]:
            return self._synthesise(replica, request, cancel)

        async with aclosing(self._pool.iterate(factory, deadline=request.deadline)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _synthesise(self, replica: ChatterboxReplica, request: SpeechRequest,
                    cancel: threading.Event) -> Iterator[FloatAudio]:
        """One utterance on one replica (runs on the replica's thread, holding its lock)."""
        if not replica.lock.acquire(blocking=False):
            raise EngineError(f"replica {replica.name} is already synthesising (pool bug)")
        try:
            model = _loaded(replica)
            # A shallow copy: generate() swaps conds.t3 to apply the preset's exaggeration, and that
            # must not change the cached conditioning other replicas share.
            model.conds = copy.copy(self._conditioning(replica, request.voice))
            if cancel.is_set():
                return
            stream_params = replica.info["stream"]
            if stream_params is not None:
                # info["stream"] is set only for a model that has generate_stream
                yield from self._generate_stream(cast(StreamingChatterboxModel, model), request,
                                                 stream_params, cancel)
            else:
                kwargs = _filter(self._generation_kwargs(request.preset), replica.info["generate"])
                yield to_mono_float32(model.generate(request.text, **kwargs))
        finally:
            replica.lock.release()

    def _generate_stream(self, model: StreamingChatterboxModel, request: SpeechRequest,
                         accepted: frozenset[str] | None,
                         cancel: threading.Event) -> Iterator[FloatAudio]:
        kwargs = self._generation_kwargs(request.preset)
        kwargs["chunk_size"] = chunk_size_for(request.preset, request.first_in_turn)
        kwargs["print_metrics"] = False
        fade_in_s = 0.0
        if accepted is None or "fade_duration" in accepted:
            kwargs["fade_duration"] = 0.0  # no per-chunk fade: SeamJoiner handles the seams
        else:
            fade_in_s = FORK_FADE_S  # it fades anyway: undo the known ramp
        joiner = SeamJoiner(self.sample_rate, fade_in_s=fade_in_s)
        chunks = model.generate_stream(request.text, **_filter(kwargs, accepted))
        try:
            for item in chunks:
                audio = item[0] if isinstance(item, tuple) else item
                yield joiner.join(to_mono_float32(audio))
                if cancel.is_set():
                    return
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # on this thread: the fork's inference_mode block exits where it began

    def _conditioning(self, replica: ChatterboxReplica, voice: Voice | None) -> Conditionals | None:
        if voice is None:
            return replica.builtin_conds
        model = _loaded(replica)

        def prepare(wav_path: str) -> Conditionals:
            model.prepare_conditionals(wav_path, exaggeration=PREPARE_EXAGGERATION)
            if model.conds is None:
                raise EngineError("prepare_conditionals left the model without conditioning")
            return model.conds

        return self.conditioning.get(voice, replica.device, prepare)

    @staticmethod
    def _generation_kwargs(preset: Preset) -> GenerationKwargs:
        return {"exaggeration": preset.exaggeration, "cfg_weight": preset.cfg_weight,
                "temperature": preset.temperature}

    # ---- warmup ----------------------------------------------------------------------------------
    async def warmup(self, voice_id: str, preset: Preset, voice: Voice | None = None
                     ) -> dict[str, float]:
        """Synthesise a short phrase on every replica at once (kernels, allocator, the voice's
        conditioning on each device). Returns each replica's milliseconds by ``device#index``
        (also kept in ``last_warmup_ms``)."""
        await self.load()
        assert self._pool is not None
        if voice is None and voice_id not in self.builtin_voices():
            raise UnsupportedVoiceError(f"engine {self.name!r} has no built-in voice {voice_id!r}")
        request = SpeechRequest(text="Hello there.", voice_id=voice_id, preset=preset, voice=voice,
                                first_in_turn=True)
        pool = self._pool

        async def one(replica: ChatterboxReplica) -> None:
            started = time.perf_counter()

            def factory(rep: ChatterboxReplica, cancel: threading.Event) -> Iterator[FloatAudio]:
                return self._synthesise(rep, request, cancel)

            try:
                async with aclosing(pool.iterate(factory, replica=replica)) as chunks:
                    async for _ in chunks:
                        pass
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(f"warmup on {replica.name} failed: {exc}") from exc
            replica.last_warmup_ms = (time.perf_counter() - started) * 1000

        await _all(one(r) for r in pool.replicas)
        return {r.name: round(r.last_warmup_ms or 0.0, 2) for r in pool.replicas}


def chunk_size_for(preset: Preset, first_in_turn: bool) -> int:
    """Speech tokens per streamed chunk: a smaller first chunk opens a turn sooner (``adaptive``).

    ``generate_stream`` takes one chunk size per call, so the first segment of a turn is generated
    with ``first_chunk_size`` and the following segments with ``continuation_chunk_size``.
    """
    if first_in_turn and preset.first_chunk_size:
        return preset.first_chunk_size
    if not first_in_turn and preset.continuation_chunk_size:
        return preset.continuation_chunk_size
    return preset.chunk_size


async def _all(coros: Iterable[Coroutine[object, object, None]]) -> None:
    """Run all at once; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None


def _filter(kwargs: GenerationKwargs, accepted: frozenset[str] | None) -> GenerationKwargs:
    return kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}


__all__ = ["BUILTIN_VOICE", "ChatterboxEngine", "ChatterboxLoader", "check_checkpoint",
           "chunk_size_for", "loader_weight_formats", "resolve_devices"]
