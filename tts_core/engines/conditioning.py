"""A cloned voice's prepared conditioning, computed once and reused: memory, then disk, then the model.

Preparing Chatterbox's conditioning (speaker embedding, prompt tokens, the vocoder's reference
features) runs three networks over the reference audio; it costs far more than reusing the result.
The result is kept

* in memory, per device (an LRU of ``memory_capacity`` entries), and
* on disk as ``<cache_dir>/<voice_id>-<digest>.pt`` (the model's own ``Conditionals.save``), so a
  restart loads it instead of recomputing it. The digest covers the reference samples and their
  rate: a voice whose WAV is replaced gets a new file, never the old voice's conditioning.

The emotion setting (``exaggeration``) is not part of the key: ``prepare_conditionals`` only stores it
as ``emotion_adv`` and ``generate`` / ``generate_stream`` replace that whenever a call asks for another
value, so one preparation serves every preset. The voice's transcript is not used (Chatterbox
clones from audio alone).

Concurrent first uses of one voice (two replicas, two calls) share one preparation: a per-voice lock
makes the second wait for the first and then find the result in memory or on disk. Every method
blocks (model calls, file I/O) and runs on a replica's worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import tempfile
import threading
import wave
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, Self

import numpy as np

from tts_core.audio.arrays import FloatAudio
from tts_core.voices import Voice

log = logging.getLogger(__name__)


class Conditionals(Protocol):
    """A voice's prepared conditioning as the model keeps it (Chatterbox's ``Conditionals``)."""

    def save(self, fpath: Path) -> None:
        """Write it to ``fpath`` (read back by the loader's ``load_conditionals``)."""
        ...

    def to(self, device: str) -> Self:
        """The same conditioning on another device."""
        ...


def voice_key(voice: Voice) -> str:
    """``<voice_id>-<16 hex digits of sha256(rate, samples)>``; ids are already path-safe."""
    digest = hashlib.sha256()
    digest.update(str(int(voice.sample_rate)).encode())
    digest.update(np.ascontiguousarray(voice.audio, dtype=np.float32).tobytes())
    return f"{voice.id}-{digest.hexdigest()[:16]}"


def write_wav(path: str | os.PathLike[str], audio: FloatAudio, sample_rate: int) -> None:
    """Reference audio as a 16-bit PCM mono WAV (what ``prepare_conditionals`` reads from a path)."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(os.fspath(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(int(sample_rate))
        wav.writeframes(pcm.tobytes())


class ConditioningCache:
    """Prepared conditioning per (voice, device)."""

    def __init__(
        self,
        cache_dir: Path | None,
        load: Callable[[Path, str], Conditionals],
        *,
        memory_capacity: int = 64,
    ) -> None:
        self.cache_dir = cache_dir
        self._load = load
        self.memory_capacity = memory_capacity
        self._memory: OrderedDict[tuple[str, str], Conditionals] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._disk_warned = False
        self.counts = {"prepared": 0, "disk_loads": 0, "memory_hits": 0, "copied": 0}

    def get(self, voice: Voice, device: str, prepare: Callable[[str], Conditionals]) -> Conditionals:
        """The voice's conditioning on ``device``; ``prepare(wav_path)`` runs only if no level has it.

        The object returned is shared: callers must not mutate it (hand the model a shallow copy).
        """
        key = voice_key(voice)
        found = self._from_memory(key, device)
        if found is not None:
            return found
        with self._key_lock(key):
            found = self._from_memory(key, device)
            if found is not None:
                return found
            conds = self._from_disk(key, device)
            if conds is None:
                conds = self._from_other_device(key, device)
            if conds is None:
                conds = self._prepare(voice, prepare)
                self._save(key, conds)
            self._remember(key, device, conds)
            return conds

    # ---- levels -----------------------------------------------------------------------------------
    def _from_memory(self, key: str, device: str) -> Conditionals | None:
        with self._lock:
            conds = self._memory.get((key, device))
            if conds is not None:
                self._memory.move_to_end((key, device))
                self.counts["memory_hits"] += 1
            return conds

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.pt"

    def _from_disk(self, key: str, device: str) -> Conditionals | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            conds = self._load(path, device)
        except Exception as exc:  # a truncated or foreign file: recompute and overwrite it
            log.warning("discarding unreadable conditioning cache %s: %s", path, exc)
            return None
        self.counts["disk_loads"] += 1
        return conds

    def _from_other_device(self, key: str, device: str) -> Conditionals | None:
        """Without a disk cache, another device's copy moved over beats recomputing."""
        with self._lock:
            other = next((c for (k, _), c in self._memory.items() if k == key), None)
        if other is None:
            return None
        self.counts["copied"] += 1
        return copy.deepcopy(other).to(device)

    def _prepare(self, voice: Voice, prepare: Callable[[str], Conditionals]) -> Conditionals:
        fd, tmp = tempfile.mkstemp(prefix=f"voice-{voice.id}-", suffix=".wav")
        os.close(fd)
        try:
            write_wav(tmp, voice.audio, voice.sample_rate)
            conds = prepare(tmp)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.counts["prepared"] += 1
        return conds

    def _save(self, key: str, conds: Conditionals) -> None:
        path = self._path(key)
        if path is None:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conds.save(tmp)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only checkpoint volume: keep working from memory
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not self._disk_warned:
                self._disk_warned = True
                log.warning("cannot write the conditioning cache in %s (%s); prepared voices are "
                            "kept in memory only", path.parent, exc)

    def _remember(self, key: str, device: str, conds: Conditionals) -> None:
        with self._lock:
            self._memory[(key, device)] = conds
            self._memory.move_to_end((key, device))
            while len(self._memory) > self.memory_capacity:
                self._memory.popitem(last=False)

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, "size": len(self._memory)}


__all__ = ["Conditionals", "ConditioningCache", "voice_key", "write_wav"]
