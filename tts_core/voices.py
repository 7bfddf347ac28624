"""Voices: reference audio for cloning engines, found locally or fetched from a voice server.

``VoiceStore.get(voice_id)`` looks a voice up level by level:

1. memory: an LRU of decoded voices bounded by ``memory_capacity``;
2. ``voices_dir/<id>.wav`` (plus an optional ``<id>.txt`` transcript), the operator's own voices;
3. the disk cache of voices fetched earlier from the voice server (``<cache_dir>/<id>.wav``),
   bounded by ``disk_cache_max_bytes`` (least recently written or served evicted first);
4. the voice server: ``GET {remote_base_url}/{id}.wav`` and ``GET {remote_base_url}/{id}.txt``
   (a 404 for the transcript just means there is none).

Voice ids are checked against ``VOICE_ID_PATTERN`` before any path or URL is built from them.
Concurrent lookups of one uncached voice share a single load (and a single remote fetch); a
failure reaches every waiter and is not cached. Remote bodies are size-limited while streaming,
validated as PCM WAV, and only then written to the disk cache (temp file + ``os.replace``). File
reads and WAV decoding run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NotRequired, TypedDict

import httpx
import numpy as np

from tts_core.audio.arrays import FloatAudio
from tts_core.audio.telephony_format import TELEPHONY_RATE
from tts_core.audio.wav_file import PCM, AudioFileError, check_format, decode, parse_wav
from tts_core.errors import NotFound, Unprocessable, UpstreamFailed, VoiceBridgeError
from tts_core.http_body import BodyEncoded, BodyTooLarge, read_limited

log = logging.getLogger(__name__)

VOICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

MIN_REFERENCE_S = 0.5
MAX_REFERENCE_S = 60.0
MAX_TRANSCRIPT_BYTES = 64 * 1024
WAV_CONTENT_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "application/octet-stream"})
TRANSCRIPT_CONTENT_TYPES = frozenset({"", "text/plain", "application/octet-stream"})
_MIN_SAMPLE_RATE = TELEPHONY_RATE  # below the phone line's rate a voice cannot be heard as such
_MAX_SAMPLE_RATE = 192000
_SILENCE_PEAK = 1e-4


@dataclass(frozen=True, eq=False)
class Voice:
    """A cloning voice: mono float32 reference audio plus an optional transcript."""

    id: str
    audio: FloatAudio
    sample_rate: int
    transcript: str | None = None
    source: str = "local"
    conditioning: dict[str, object] = field(default_factory=dict)
    """Per-engine prepared conditioning (speaker embeddings), keyed by engine name."""


# ---- errors ----------------------------------------------------------------------------------------


class InvalidVoiceId(Unprocessable, ValueError):
    """The voice id does not match ``VOICE_ID_PATTERN`` (it is never used in a path or URL)."""

    kind = "invalid_voice"


class VoiceNotFound(NotFound, LookupError):
    """No level (memory, voices dir, disk cache, voice server) has this voice."""

    kind = "voice_not_found"


class VoiceFetchError(UpstreamFailed, RuntimeError):
    """The voice server (or the disk) could not deliver a usable voice (timeout, HTTP error, bad
    body): the request was fine, what it depends on failed, hence 502."""

    kind = "voice_fetch_failed"


class InvalidVoiceAudio(VoiceFetchError):
    """The reference audio is unusable: not a PCM WAV, empty, too short, too long or silent.

    Raised for local files as well as remote ones; it subclasses ``VoiceFetchError`` so callers that
    handle fetch failures handle it too (the voice's source failed to deliver usable audio).
    """


def validate_voice_id(voice_id: object) -> str:
    """Return ``voice_id`` if it is a well-formed voice id, else raise ``InvalidVoiceId``."""
    if not isinstance(voice_id, str) or not VOICE_ID_PATTERN.fullmatch(voice_id):
        shown = repr(voice_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidVoiceId(f"invalid voice id {shown}: use 1-64 characters from A-Z a-z 0-9 _ -")
    return voice_id


# ---- WAV decoding ----------------------------------------------------------------------------------


def decode_wav(
    source: str | os.PathLike[str] | BinaryIO | bytes,
    *,
    min_seconds: float = MIN_REFERENCE_S,
    max_seconds: float = MAX_REFERENCE_S,
) -> tuple[FloatAudio, int]:
    """Decode a PCM WAV (8/16/24/32-bit, any channel count) into read-only mono float32 in [-1, 1].

    Reads through the one WAV reader (tts_core/audio/wav_file.py). Raises ``InvalidVoiceAudio``
    with a readable message for anything that cannot serve as reference audio. The duration is
    checked from the header before the samples are decoded.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh:
            data = fh.read()
    else:
        data = source.read()
    try:
        info = parse_wav(data)
        check_format(info, min_rate=_MIN_SAMPLE_RATE, max_rate=_MAX_SAMPLE_RATE, encodings=(PCM,))
    except AudioFileError as exc:
        raise InvalidVoiceAudio(f"not a valid PCM WAV file: {exc}") from exc
    if info.seconds > max_seconds:
        raise InvalidVoiceAudio(f"reference audio is {info.seconds:.1f} s long; "
                                f"the limit is {max_seconds:g} s")
    if info.frames == 0:
        raise InvalidVoiceAudio("reference audio is empty")
    if info.seconds < min_seconds:
        raise InvalidVoiceAudio(
            f"reference audio is {info.seconds:.2f} s long; at least {min_seconds:g} s is needed")
    audio = decode(info)
    if float(np.max(np.abs(audio))) < _SILENCE_PEAK:
        raise InvalidVoiceAudio("reference audio is silent")
    audio.setflags(write=False)  # shared by every call that uses the voice
    return audio, info.rate


def _clean_transcript(text: str) -> str | None:
    text = text.strip()
    return text or None


def _read_transcript(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_TRANSCRIPT_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_TRANSCRIPT_BYTES:
        raise InvalidVoiceAudio(f"transcript {path.name} is larger than {MAX_TRANSCRIPT_BYTES} bytes")
    return _clean_transcript(data.decode("utf-8", errors="replace"))


def _load_from_dir(directory: Path, voice_id: str, source: str) -> Voice | None:
    """``directory/<id>.wav`` (+ ``<id>.txt``) as a Voice, or None if there is no such WAV."""
    wav_path = directory / f"{voice_id}.wav"
    if not wav_path.is_file():
        return None
    try:
        audio, rate = decode_wav(wav_path)
    except InvalidVoiceAudio as exc:
        raise InvalidVoiceAudio(f"voice {voice_id!r}: {exc}") from exc
    transcript = _read_transcript(directory / f"{voice_id}.txt")
    return Voice(id=voice_id, audio=audio, sample_rate=rate, transcript=transcript, source=source)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---- the store -------------------------------------------------------------------------------------


class PreloadReport(TypedDict):
    """``PreloadResult.as_dict``: one voice's entry in the ``/preload`` answer."""

    ok: bool
    source: str | None
    elapsed_ms: float
    error: NotRequired[str | None]
    error_type: NotRequired[str | None]


@dataclass(frozen=True)
class PreloadResult:
    """Outcome of preloading one voice."""

    voice_id: str
    ok: bool
    source: str | None = None
    """The level that served the voice: memory, local, disk_cache or remote."""
    elapsed_ms: float = 0.0
    error: str | None = None
    error_type: str | None = None
    """Exception class name on failure, e.g. VoiceNotFound, VoiceFetchError, InvalidVoiceId."""

    def as_dict(self) -> PreloadReport:
        out: PreloadReport = {"ok": self.ok, "source": self.source,
                               "elapsed_ms": round(self.elapsed_ms, 2)}
        if not self.ok:
            out["error"] = self.error
            out["error_type"] = self.error_type
        return out


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _evict_lru(directory: Path, max_bytes: int, *, keep: str) -> int:
    """Delete the least recently used cached voices (``.wav`` mtime: written or last served)
    until the directory's voices fit ``max_bytes``; ``keep`` (just written) stays. Returns how
    many were deleted. Runs in a worker thread."""
    entries = []
    total = 0
    for wav in directory.glob("*.wav"):
        with contextlib.suppress(OSError):
            stat = wav.stat()
            txt = wav.with_suffix(".txt")
            size = stat.st_size + (txt.stat().st_size if txt.exists() else 0)
            total += size
            if wav.stem != keep:
                entries.append((stat.st_mtime_ns, wav.stem, size))
    evicted = 0
    for _, voice_id, size in sorted(entries):
        if total <= max_bytes:
            break
        VoiceStore._drop_cached(directory, voice_id)
        total -= size
        evicted += 1
    if evicted:
        log.info("voice disk cache: evicted %d least recently used voice(s) to stay under %d bytes",
                 evicted, max_bytes)
    return evicted


class VoiceStore:
    """Reference voices for an asyncio server: memory LRU, voices dir, disk cache, voice server."""

    def __init__(
        self,
        voices_dir: Path | None,
        *,
        remote_base_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        cache_dir: Path | None = None,
        memory_capacity: int = 32,
        max_bytes: int = 10 * 1024 * 1024,
        fetch_timeout_s: float = 10.0,
        disk_cache_max_bytes: int | None = None,
    ) -> None:
        if memory_capacity < 1:
            raise ValueError("memory_capacity must be at least 1")
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if fetch_timeout_s <= 0:
            raise ValueError("fetch_timeout_s must be positive")
        self.voices_dir = Path(voices_dir) if voices_dir is not None else None
        self.remote_base_url: str | None = None
        if remote_base_url:
            url = httpx.URL(remote_base_url)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(f"remote_base_url must be an http(s) URL, got {remote_base_url!r}")
            self.remote_base_url = remote_base_url.rstrip("/")
        self.memory_capacity = memory_capacity
        self.max_bytes = max_bytes
        self.fetch_timeout_s = fetch_timeout_s
        self.disk_cache_max_bytes = disk_cache_max_bytes
        """Past this, the least recently used cached voices are deleted (None: no limit)."""

        if cache_dir is not None:
            self._cache_dir: Path | None = Path(cache_dir)
        elif self.voices_dir is not None:
            self._cache_dir = self.voices_dir / ".remote-cache"
        else:
            self._cache_dir = None  # a temporary directory, made on the first remote fetch
        self._temp_cache_dir: Path | None = None

        self._client = http_client
        self._owns_client = http_client is None
        self._memory: OrderedDict[str, Voice] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[tuple[Voice, str]]] = {}
        self._closed = False
        self._counts = {
            "memory_hits": 0, "local_hits": 0, "disk_cache_hits": 0, "remote_loads": 0,
            "misses": 0, "fetches": 0, "fetch_errors": 0, "coalesced": 0, "evictions": 0,
            "disk_evictions": 0,
        }

    # ---- lookups ------------------------------------------------------------------------------------

    async def get(self, voice_id: str) -> Voice:
        """The voice, from the first level that has it.

        Raises ``InvalidVoiceId``, ``VoiceNotFound``, ``VoiceFetchError`` (incl. ``InvalidVoiceAudio``).
        """
        voice, _ = await self._get(voice_id)
        return voice

    async def _get(self, voice_id: str) -> tuple[Voice, str]:
        validate_voice_id(voice_id)
        if self._closed:
            raise RuntimeError("VoiceStore is closed")
        voice = self._memory.get(voice_id)
        if voice is not None:
            self._memory.move_to_end(voice_id)
            self._counts["memory_hits"] += 1
            return voice, "memory"
        task = self._inflight.get(voice_id)
        if task is None or task.done():
            task = asyncio.create_task(self._load(voice_id), name=f"voice-load-{voice_id}")
            self._inflight[voice_id] = task
            task.add_done_callback(functools.partial(self._load_done, voice_id))
        else:
            self._counts["coalesced"] += 1
        # shield: a waiter that gives up must not cancel the load the other waiters share
        return await asyncio.shield(task)

    def _load_done(self, voice_id: str, task: asyncio.Task[tuple[Voice, str]]) -> None:
        if self._inflight.get(voice_id) is task:
            del self._inflight[voice_id]
        if not task.cancelled():
            task.exception()  # retrieved: a load nobody waits for any more must not warn

    async def _load(self, voice_id: str) -> tuple[Voice, str]:
        if self.voices_dir is not None:
            try:
                voice = await asyncio.to_thread(_load_from_dir, self.voices_dir, voice_id, "local")
            except OSError as exc:
                reason = exc.strerror or exc
                raise VoiceFetchError(f"could not read voice {voice_id!r}: {reason}") from exc
            if voice is not None:
                self._counts["local_hits"] += 1
                return self._remember(voice), "local"
        cache_dir = self._cache_dir or self._temp_cache_dir
        if cache_dir is not None:
            try:
                voice = await asyncio.to_thread(_load_from_dir, cache_dir, voice_id, "disk_cache")
            except (InvalidVoiceAudio, OSError) as exc:
                log.warning("discarding unusable cached voice %s: %s", voice_id, exc)
                await asyncio.to_thread(self._drop_cached, cache_dir, voice_id)
                voice = None
            if voice is not None:
                await asyncio.to_thread(_touch, cache_dir / f"{voice_id}.wav")  # recently used
                self._counts["disk_cache_hits"] += 1
                return self._remember(voice), "disk_cache"
        if self.remote_base_url is None:
            self._counts["misses"] += 1
            raise VoiceNotFound(f"voice {voice_id!r} not found")
        try:
            voice = await self._fetch_remote(voice_id)
        except VoiceNotFound:
            self._counts["misses"] += 1
            raise
        except VoiceFetchError:
            self._counts["fetch_errors"] += 1
            raise
        self._counts["remote_loads"] += 1
        return self._remember(voice), "remote"

    def _remember(self, voice: Voice) -> Voice:
        self._memory[voice.id] = voice
        self._memory.move_to_end(voice.id)
        while len(self._memory) > self.memory_capacity:
            evicted, _ = self._memory.popitem(last=False)
            self._counts["evictions"] += 1
            log.debug("evicted voice %s from memory", evicted)
        return voice

    # ---- remote -------------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.fetch_timeout_s),
                                             follow_redirects=False)
        return self._client

    async def _fetch_remote(self, voice_id: str) -> Voice:
        assert self.remote_base_url is not None
        base = self.remote_base_url
        client = self._http()
        self._counts["fetches"] += 1
        started = time.perf_counter()
        transcript_task: asyncio.Task[str | None] | None = None
        try:
            async with asyncio.timeout(self.fetch_timeout_s):
                transcript_task = asyncio.create_task(
                    self._fetch_transcript(client, f"{base}/{voice_id}.txt", voice_id))
                data = await self._fetch_wav(client, f"{base}/{voice_id}.wav", voice_id)
                transcript = await transcript_task
        except TimeoutError as exc:
            raise VoiceFetchError(f"voice server timed out after {self.fetch_timeout_s:g} s "
                                  f"fetching {voice_id!r}") from exc
        except httpx.TimeoutException as exc:
            raise VoiceFetchError(f"voice server timed out fetching {voice_id!r}") from exc
        except httpx.HTTPError as exc:
            raise VoiceFetchError(
                f"voice server request for {voice_id!r} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if transcript_task is not None:  # cancelled if still running, its outcome retrieved
                transcript_task.cancel()
                await asyncio.gather(transcript_task, return_exceptions=True)

        try:
            audio, rate = await asyncio.to_thread(decode_wav, data)
        except InvalidVoiceAudio as exc:
            raise InvalidVoiceAudio(
                f"voice server sent unusable audio for {voice_id!r}: {exc}") from exc
        voice = Voice(id=voice_id, audio=audio, sample_rate=rate, transcript=transcript,
                      source="remote")
        try:
            await asyncio.to_thread(self._write_cache, voice_id, data, transcript)
        except OSError as exc:  # the voice is still usable; it will just be fetched again next time
            log.warning("could not cache voice %s on disk: %s", voice_id, exc)
        log.info("fetched voice %s from voice server (%d bytes, %.0f ms)", voice_id, len(data),
                 (time.perf_counter() - started) * 1000)
        return voice

    async def _fetch_wav(self, client: httpx.AsyncClient, url: str, voice_id: str) -> bytes:
        headers = {"Accept": "audio/wav", "Accept-Encoding": "identity"}
        async with client.stream("GET", url, timeout=self.fetch_timeout_s, headers=headers) as resp:
            if resp.status_code == 404:
                raise VoiceNotFound(f"voice {voice_id!r} not found (voice server returned 404)")
            if resp.status_code != 200:
                raise VoiceFetchError(f"voice server returned HTTP {resp.status_code} for {voice_id!r}")
            ctype = _media_type(resp)
            if ctype not in WAV_CONTENT_TYPES:
                raise VoiceFetchError(
                    f"voice server sent content-type {ctype or '(none)'!r} for {voice_id!r}; "
                    "expected audio/wav")
            return await self._read_limited(resp, self.max_bytes, f"audio for {voice_id!r}")

    async def _fetch_transcript(self, client: httpx.AsyncClient, url: str, voice_id: str) -> str | None:
        headers = {"Accept": "text/plain", "Accept-Encoding": "identity"}
        async with client.stream("GET", url, timeout=self.fetch_timeout_s, headers=headers) as resp:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise VoiceFetchError(
                    f"voice server returned HTTP {resp.status_code} for the transcript of {voice_id!r}")
            ctype = _media_type(resp)
            if ctype not in TRANSCRIPT_CONTENT_TYPES:
                raise VoiceFetchError(
                    f"voice server sent content-type {ctype!r} for the transcript of {voice_id!r}")
            data = await self._read_limited(resp, MAX_TRANSCRIPT_BYTES, f"transcript for {voice_id!r}")
        try:
            return _clean_transcript(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise VoiceFetchError(f"transcript for {voice_id!r} is not UTF-8 text") from exc

    @staticmethod
    async def _read_limited(resp: httpx.Response, limit: int, what: str) -> bytes:
        """The body, refusing it as soon as it (or its declared length) exceeds ``limit`` bytes."""
        try:
            return await read_limited(resp, limit)
        except BodyTooLarge as exc:
            if exc.declared is not None:
                raise VoiceFetchError(f"{what} is {exc.declared} bytes; the limit is {limit}") from None
            raise VoiceFetchError(f"{what} is larger than the limit of {limit} bytes") from None
        except BodyEncoded as exc:
            raise VoiceFetchError(f"{what}: {exc}") from None

    # ---- disk cache ---------------------------------------------------------------------------------

    def _write_cache(self, voice_id: str, data: bytes, transcript: str | None) -> None:
        directory = self._cache_dir
        if directory is None:
            if self._temp_cache_dir is None:
                self._temp_cache_dir = Path(tempfile.mkdtemp(prefix="voice-bridge-voices-"))
            directory = self._temp_cache_dir
        directory.mkdir(parents=True, exist_ok=True)
        txt = directory / f"{voice_id}.txt"
        if transcript is not None:  # transcript first: a cached .wav is always complete
            _atomic_write(txt, transcript.encode("utf-8"))
        else:
            txt.unlink(missing_ok=True)
        _atomic_write(directory / f"{voice_id}.wav", data)
        if self.disk_cache_max_bytes is not None:
            self._counts["disk_evictions"] += _evict_lru(directory, self.disk_cache_max_bytes,
                                                         keep=voice_id)

    @staticmethod
    def _drop_cached(directory: Path, voice_id: str) -> None:
        for suffix in (".wav", ".txt"):
            with contextlib.suppress(OSError):
                (directory / f"{voice_id}{suffix}").unlink(missing_ok=True)

    # ---- preload, listing, stats --------------------------------------------------------------------

    async def preload(
        self, voice_ids: Iterable[str], *, concurrency: int = 8
    ) -> dict[str, PreloadResult]:
        """Load voices in parallel (at most ``concurrency`` at once); one result per distinct id.

        Never raises for a bad voice: invalid ids, missing voices and fetch failures become results
        with ``ok=False``.
        """
        ids = list(dict.fromkeys(voice_ids))
        limit = asyncio.Semaphore(max(1, concurrency))

        async def one(voice_id: str) -> PreloadResult:
            async with limit:
                started = time.perf_counter()
                try:
                    _, level = await self._get(voice_id)
                except VoiceBridgeError as exc:  # a bad voice; anything else is a bug and raises
                    return PreloadResult(voice_id, ok=False, elapsed_ms=_ms_since(started),
                                         error=str(exc), error_type=type(exc).__name__)
                return PreloadResult(voice_id, ok=True, source=level, elapsed_ms=_ms_since(started))

        results = await asyncio.gather(*(one(v) for v in ids))
        return {r.voice_id: r for r in results}

    def list_local(self) -> list[str]:
        """Ids of the ``<id>.wav`` files in ``voices_dir`` (sorted; the disk cache is not included)."""
        if self.voices_dir is None or not self.voices_dir.is_dir():
            return []
        ids = []
        with os.scandir(self.voices_dir) as entries:
            for entry in entries:
                stem, dot, ext = entry.name.rpartition(".")
                if dot and ext == "wav" and VOICE_ID_PATTERN.fullmatch(stem) and entry.is_file():
                    ids.append(stem)
        return sorted(ids)

    def cached(self, voice_id: str) -> bool:
        """Whether the voice is in memory (no I/O needed to get it)."""
        return validate_voice_id(voice_id) in self._memory

    def invalidate(self, voice_id: str) -> bool:
        """Drop a voice from memory (its conditioning with it); True if it was there."""
        return self._memory.pop(validate_voice_id(voice_id), None) is not None

    def stats(self) -> dict[str, int]:
        return {**self._counts, "in_flight": len(self._inflight), "size": len(self._memory),
                "capacity": self.memory_capacity}

    # ---- per-engine conditioning --------------------------------------------------------------------

    def set_conditioning(self, voice_id: str, engine_name: str, obj: object) -> bool:
        """Keep an engine's prepared conditioning with the in-memory voice (dropped on eviction).

        Returns False (and stores nothing) if the voice is not in memory any more.
        """
        voice = self._memory.get(validate_voice_id(voice_id))
        if voice is None:
            return False
        voice.conditioning[engine_name] = obj
        return True

    def get_conditioning(self, voice_id: str, engine_name: str) -> object | None:
        voice = self._memory.get(validate_voice_id(voice_id))
        return None if voice is None else voice.conditioning.get(engine_name)

    # ---- shutdown -----------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Cancel loads in flight, close the HTTP client if the store made it, drop a temp cache."""
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        self._memory.clear()
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._temp_cache_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._temp_cache_dir, True)
            self._temp_cache_dir = None


def _media_type(resp: httpx.Response) -> str:
    content_type: str = resp.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower()


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


__all__ = [
    "MAX_REFERENCE_S",
    "MIN_REFERENCE_S",
    "VOICE_ID_PATTERN",
    "InvalidVoiceAudio",
    "InvalidVoiceId",
    "PreloadReport",
    "PreloadResult",
    "Voice",
    "VoiceFetchError",
    "VoiceNotFound",
    "VoiceStore",
    "decode_wav",
    "validate_voice_id",
]
