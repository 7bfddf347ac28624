"""A STAND-IN for Chatterbox (not the real model): same classes, method names and signatures as
``chatterbox.tts`` in chatterbox-tts 0.1.7 and the chatterbox-streaming 0.1.2 fork, numpy only.

No weights can be downloaded here and CI has neither torch nor a GPU, so the engine adapter is tested
against this. What it keeps from the real thing, because the adapter depends on it:

* ``from_local(ckpt_dir, device)`` loads the built-in voice from ``conds.pt`` if present;
* ``prepare_conditionals(wav_fpath, exaggeration)`` reads a WAV path and REPLACES ``self.conds``
  (mutable state on the model object);
* ``generate`` / ``generate_stream`` speak with whatever ``self.conds`` holds *at the moment each chunk
  is made*, and ``generate_stream`` fades every chunk in over ``fade_duration`` exactly as the fork's
  ``_process_token_buffer`` does (``int(fade_duration * sr)`` samples of ``np.linspace(0, 1, n)``);
* chunks of ``chunk_size`` speech tokens, 40 ms (960 samples at 24 kHz) per token;
* audio comes back as a (1, T) tensor-like object (``.detach().cpu().numpy()``).

The "voice" is a steady tone whose frequency is estimated from the reference WAV, so a test can
tell from the output audio alone whose conditioning produced each chunk. ``generate_stream`` also
checks that it is resumed on the thread it started on (torch's inference mode is thread-local).
"""

from __future__ import annotations

import pickle
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SR = 24000
SAMPLES_PER_TOKEN = 960
TOKENS_PER_CHAR = 0.6


class StandinTensor:
    """Just enough of torch.Tensor for the adapter: ``.detach().cpu().numpy()``."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def detach(self) -> StandinTensor:
        return self

    def cpu(self) -> StandinTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape


@dataclass
class StandinT3Cond:
    speaker_emb: np.ndarray
    emotion_adv: np.ndarray

    def to(self, device: Any = None) -> StandinT3Cond:
        return self


@dataclass
class StandinConditionals:
    """``chatterbox.tts.Conditionals``: t3 + gen, ``to``, ``save(fpath)``, ``load(fpath, map_location)``."""

    t3: StandinT3Cond
    gen: dict[str, Any]

    def to(self, device: Any) -> StandinConditionals:
        self.gen["device"] = str(device)
        return self

    def save(self, fpath: Path) -> None:
        with open(fpath, "wb") as fh:
            pickle.dump({"t3": dict(self.t3.__dict__), "gen": dict(self.gen)}, fh)

    @classmethod
    def load(cls, fpath: Path, map_location: Any = "cpu") -> StandinConditionals:
        with open(fpath, "rb") as fh:
            data = pickle.load(fh)
        return cls(StandinT3Cond(**data["t3"]), {**data["gen"], "device": str(map_location)})

    @classmethod
    def of_tone(cls, freq: float, exaggeration: float = 0.5) -> StandinConditionals:
        return cls(StandinT3Cond(np.array([[freq]]), exaggeration * np.ones((1, 1, 1))),
                   {"embedding": np.array([freq])})


@dataclass
class StandinMetrics:
    """The fork's StreamingMetrics."""

    latency_to_first_chunk: float | None = None
    rtf: float | None = None
    total_generation_time: float | None = None
    total_audio_duration: float | None = None
    chunk_count: int = 0


@dataclass
class StandinStats:
    """What every model made by one loader did (shared, thread-safe enough for counters)."""

    loads: list[tuple[str, str]] = field(default_factory=list)
    prepare_calls: int = 0
    cond_loads: int = 0
    chunks: int = 0
    closed: int = 0
    closed_on_start_thread: list[bool] = field(default_factory=list)
    """Per closed stream: whether it was closed on the thread it started on (inference mode's)."""
    calls: list[dict[str, Any]] = field(default_factory=list)
    """One entry per generate / generate_stream call: model id, kwargs, exaggeration in effect."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def estimate_freq(audio: np.ndarray, sample_rate: int) -> float:
    """Frequency of a steady tone from its zero crossings."""
    signs = np.signbit(audio)
    crossings = int(np.count_nonzero(signs[1:] != signs[:-1]))
    return crossings / 2 / (audio.size / sample_rate)


def tone(freq: float, seconds: float, rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class StandinChatterboxTTS:
    """Stand-in for chatterbox-tts 0.1.7's ``ChatterboxTTS`` (no ``generate_stream``)."""

    def __init__(self, device: str, conds: StandinConditionals | None = None) -> None:
        self.sr = SR
        self.device = device
        self.conds = conds
        self.stats = StandinStats()
        self.chunk_delay_s = 0.0
        self.prepare_delay_s = 0.0
        self.phase_jump = 0.0
        """Radians added at each new chunk: a vocoder re-render that does not continue the last one."""

    @classmethod
    def from_local(cls, ckpt_dir: str | Path, device: str) -> StandinChatterboxTTS:
        ckpt_dir = Path(ckpt_dir)
        conds = None
        if (builtin_voice := ckpt_dir / "conds.pt").exists():
            conds = StandinConditionals.load(builtin_voice, map_location=device).to(device)
        return cls(device, conds=conds)

    @classmethod
    def from_pretrained(cls, device: str) -> StandinChatterboxTTS:
        raise AssertionError("from_pretrained downloads weights: the engine must never call it")

    def prepare_conditionals(self, wav_fpath: str, exaggeration: float = 0.5) -> None:
        with wave.open(str(wav_fpath), "rb") as wav:
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        if self.prepare_delay_s:
            time.sleep(self.prepare_delay_s)
        with self.stats.lock:
            self.stats.prepare_calls += 1
        freq = round(estimate_freq(pcm.astype(np.float32), rate))
        self.conds = StandinConditionals.of_tone(freq, exaggeration)

    def _begin(self, audio_prompt_path: str | None, exaggeration: float) -> None:
        if audio_prompt_path:
            self.prepare_conditionals(audio_prompt_path, exaggeration=exaggeration)
        else:
            assert self.conds is not None, "Please `prepare_conditionals` first or specify `audio_prompt_path`"  # noqa: E501
        if exaggeration != self.conds.t3.emotion_adv[0, 0, 0]:  # the real code replaces conds.t3
            self.conds.t3 = StandinT3Cond(self.conds.t3.speaker_emb, exaggeration * np.ones((1, 1, 1)))

    def _record(self, **kwargs: Any) -> None:
        with self.stats.lock:
            self.stats.calls.append({"model": id(self), **kwargs,
                                     "emotion_adv": float(self.conds.t3.emotion_adv[0, 0, 0])})

    def _tokens(self, text: str) -> int:
        return max(1, round(len(text) * TOKENS_PER_CHAR))

    def _voice_freq(self) -> float:
        return float(self.conds.gen["embedding"][0])

    def generate(self, text: str, repetition_penalty: float = 1.2, min_p: float = 0.05,
                 top_p: float = 1.0, audio_prompt_path: str | None = None, exaggeration: float = 0.5,
                 cfg_weight: float = 0.5, temperature: float = 0.8) -> StandinTensor:
        self._begin(audio_prompt_path, exaggeration)
        self._record(kind="generate", text=text, exaggeration=exaggeration, cfg_weight=cfg_weight,
                     temperature=temperature)
        if self.chunk_delay_s:
            time.sleep(self.chunk_delay_s)
        wav = tone(self._voice_freq(), self._tokens(text) * SAMPLES_PER_TOKEN / SR)
        return StandinTensor(wav[None, :])


class StandinStreamingTTS(StandinChatterboxTTS):
    """Stand-in for the chatterbox-streaming fork's ``ChatterboxTTS`` (adds ``generate_stream``)."""

    def generate(self, text: str, audio_prompt_path: str | None = None, exaggeration: float = 0.5,
                 cfg_weight: float = 0.5, temperature: float = 0.8) -> StandinTensor:
        return super().generate(text, audio_prompt_path=audio_prompt_path, exaggeration=exaggeration,
                                cfg_weight=cfg_weight, temperature=temperature)

    def generate_stream(self, text: str, audio_prompt_path: str | None = None, exaggeration: float = 0.5,
                        cfg_weight: float = 0.5, temperature: float = 0.8, chunk_size: int = 25,
                        context_window: int = 50, fade_duration: float = 0.02,
                        print_metrics: bool = True) -> Any:
        return self._stream(text, audio_prompt_path, exaggeration, cfg_weight, temperature,
                            chunk_size, fade_duration, print_metrics)

    def _stream(self, text: str, audio_prompt_path: str | None, exaggeration: float, cfg_weight: float,
                temperature: float, chunk_size: int, fade_duration: float, print_metrics: bool) -> Any:
        self._begin(audio_prompt_path, exaggeration)
        self._record(kind="generate_stream", text=text, exaggeration=exaggeration,
                     cfg_weight=cfg_weight, temperature=temperature, chunk_size=chunk_size,
                     fade_duration=fade_duration, print_metrics=print_metrics)
        thread = threading.get_ident()
        metrics = StandinMetrics()
        total = self._tokens(text)
        done = 0
        try:
            while done < total:
                assert threading.get_ident() == thread, "generator resumed on another thread"
                if self.chunk_delay_s:
                    time.sleep(self.chunk_delay_s)
                n_tokens = min(chunk_size, total - done)
                start, n = done * SAMPLES_PER_TOKEN, n_tokens * SAMPLES_PER_TOKEN
                freq = self._voice_freq()  # self.conds as it is NOW, for this chunk
                t = (start + np.arange(n)) / SR
                audio = (0.5 * np.sin(2 * np.pi * freq * t + self.phase_jump * metrics.chunk_count)
                         ).astype(np.float32)
                fade_samples = int(fade_duration * self.sr)  # the fork's per-chunk fade-in
                if fade_samples > 0:
                    fade_samples = min(fade_samples, len(audio))
                    audio[:fade_samples] *= np.linspace(0.0, 1.0, fade_samples, dtype=audio.dtype)
                metrics.chunk_count += 1
                with self.stats.lock:
                    self.stats.chunks += 1
                yield StandinTensor(audio[None, :]), metrics
                done += n_tokens
        finally:
            with self.stats.lock:
                self.stats.closed += 1
                self.stats.closed_on_start_thread.append(threading.get_ident() == thread)


class StandinFixedFadeTTS(StandinStreamingTTS):
    """A streaming variant whose ``generate_stream`` has no ``fade_duration``: it always fades 20 ms."""

    def generate_stream(self, text: str, audio_prompt_path: str | None = None,  # type: ignore[override]
                        exaggeration: float = 0.5, cfg_weight: float = 0.5, temperature: float = 0.8,
                        chunk_size: int = 25, print_metrics: bool = True) -> Any:
        return self._stream(text, audio_prompt_path, exaggeration, cfg_weight, temperature,
                            chunk_size, 0.02, print_metrics)


class StandinLoader:
    """The engine's ``model_loader`` for a stand-in model class; all its models share ``stats``."""

    def __init__(self, model_cls: type[StandinChatterboxTTS] = StandinStreamingTTS, *,
                 formats: tuple[str, ...] = ("safetensors", "pt"), **model_attrs: Any) -> None:
        self.model_cls = model_cls
        self.formats = formats
        self.model_attrs = model_attrs
        self.stats = StandinStats()
        self.models: list[StandinChatterboxTTS] = []

    def weight_formats(self) -> tuple[str, ...]:
        return self.formats

    def load_model(self, checkpoint_dir: Path, device: str) -> StandinChatterboxTTS:
        model = self.model_cls.from_local(checkpoint_dir, device)
        model.stats = self.stats
        for name, value in self.model_attrs.items():
            setattr(model, name, value)
        with self.stats.lock:
            self.stats.loads.append((str(checkpoint_dir), device))
            self.models.append(model)
        return model

    def load_conditionals(self, path: Path, device: str) -> StandinConditionals:
        with self.stats.lock:
            self.stats.cond_loads += 1
        return StandinConditionals.load(path, map_location=device)


def make_checkpoint(directory: Path, *, fmt: str = "safetensors", builtin_freq: float | None = 150.0) -> Path:
    """A checkpoint directory laid out like ResembleAI/chatterbox (placeholder weight files)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem in ("ve", "t3_cfg", "s3gen"):
        (directory / f"{stem}.{fmt}").write_bytes(b"stand-in weights")
    (directory / "tokenizer.json").write_text("{}")
    if builtin_freq is not None:
        StandinConditionals.of_tone(builtin_freq).save(directory / "conds.pt")
    return directory
