"""VoiceStore: id validation, local voices, the memory LRU, remote fetching and the disk cache.

No real network: every remote test goes through an ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

import tts_core.voices as voices_mod
from tests.conftest import eventually, wav_bytes
from tts_core.voices import (
    InvalidVoiceAudio,
    InvalidVoiceId,
    PreloadResult,
    Voice,
    VoiceFetchError,
    VoiceNotFound,
    VoiceStore,
    decode_wav,
)

BASE = "http://voices.test/v1"
RATE = 16000


# ---- helpers -----------------------------------------------------------------------------------------


def level_wav(seconds: float = 1.0, *, rate: int = RATE, channels: int = 1, width: int = 2,
              level: float | list[float] = 0.5) -> bytes:
    """A PCM WAV of constant per-channel ``level`` (DC is easy to check after decoding)."""
    levels = level if isinstance(level, list) else [level] * channels
    return wav_bytes(np.tile(levels, (round(seconds * rate), 1)), rate, width=width)


def write_voice(directory: Path, voice_id: str, transcript: str | None = None, **kwargs) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{voice_id}.wav"
    path.write_bytes(level_wav(**kwargs))
    if transcript is not None:
        (directory / f"{voice_id}.txt").write_text(transcript, encoding="utf-8")
    return path


Handler = Callable[[httpx.Request], object]


class FakeVoiceServer:
    """Routes ``GET {BASE}/<name>`` to canned responses and counts the requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: Counter[str] = Counter()

    def serve_voice(self, voice_id: str, *, transcript: str | None = None, **wav_kwargs) -> None:
        body = level_wav(**wav_kwargs)
        self.routes[f"{voice_id}.wav"] = lambda _r: httpx.Response(
            200, content=body, headers={"content-type": "audio/wav"})
        if transcript is not None:
            self.routes[f"{voice_id}.txt"] = lambda _r: httpx.Response(
                200, text=transcript, headers={"content-type": "text/plain; charset=utf-8"})

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url).startswith(BASE + "/"), request.url
        name = request.url.path.rsplit("/", 1)[-1]
        self.requests[name] += 1
        handler = self.routes.get(name)
        if handler is None:
            return httpx.Response(404, text="no such voice")
        result = handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


@pytest.fixture
def server() -> FakeVoiceServer:
    return FakeVoiceServer()


@pytest.fixture
async def http(server: FakeVoiceServer) -> AsyncIterator[httpx.AsyncClient]:
    async with server.client() as client:
        yield client


@pytest.fixture
async def remote_store(tmp_path: Path, http: httpx.AsyncClient) -> AsyncIterator[VoiceStore]:
    store = VoiceStore(tmp_path / "voices", remote_base_url=BASE, http_client=http,
                       cache_dir=tmp_path / "cache", fetch_timeout_s=2.0)
    yield store
    await store.aclose()


# ---- voice ids ---------------------------------------------------------------------------------------

BAD_IDS = ["../etc/passwd", "a/b", "", "x" * 65, "voice.wav", "a b", "..", "a\\b", "é", "bob\n",
           "%2e%2e"]


@pytest.mark.parametrize("voice_id", BAD_IDS)
async def test_invalid_ids_rejected_before_any_disk_or_network_access(
        voice_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_disk(*_args, **_kwargs):
        raise AssertionError("disk touched for an invalid id")

    def no_network(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"network used for an invalid id: {request.url}")

    monkeypatch.setattr(voices_mod, "_load_from_dir", no_disk)
    async with httpx.AsyncClient(transport=httpx.MockTransport(no_network)) as client:
        store = VoiceStore(tmp_path, remote_base_url=BASE, http_client=client)
        with pytest.raises(InvalidVoiceId):
            await store.get(voice_id)
        with pytest.raises(InvalidVoiceId):
            store.set_conditioning(voice_id, "engine", object())
        with pytest.raises(InvalidVoiceId):
            store.get_conditioning(voice_id, "engine")
        result = (await store.preload([voice_id]))[voice_id]
        assert not result.ok and result.error_type == "InvalidVoiceId"
        assert store.stats()["fetches"] == 0
        await store.aclose()
    assert not (tmp_path / ".remote-cache").exists()


def test_invalid_voice_id_is_a_value_error() -> None:
    assert issubclass(InvalidVoiceId, ValueError)
    assert issubclass(VoiceNotFound, LookupError)
    assert issubclass(VoiceFetchError, RuntimeError)


async def test_longest_valid_id_is_accepted(tmp_path: Path) -> None:
    voice_id = "A-z_9" + "x" * 59
    assert len(voice_id) == 64
    write_voice(tmp_path, voice_id)
    store = VoiceStore(tmp_path)
    assert (await store.get(voice_id)).id == voice_id
    await store.aclose()


# ---- local voices ------------------------------------------------------------------------------------


async def test_local_voice_with_transcript(tmp_path: Path) -> None:
    write_voice(tmp_path, "alice", transcript="  Hello, this is Alice.\n", seconds=1.5, channels=2,
                level=[0.5, 0.25])
    store = VoiceStore(tmp_path)
    voice = await store.get("alice")
    assert isinstance(voice, Voice)
    assert voice.id == "alice" and voice.source == "local"
    assert voice.transcript == "Hello, this is Alice."
    assert voice.sample_rate == RATE
    assert voice.audio.dtype == np.float32 and voice.audio.ndim == 1
    assert voice.audio.shape == (round(1.5 * RATE),)
    np.testing.assert_allclose(voice.audio, 0.375, atol=1e-3)  # stereo downmixed to mono
    assert not voice.audio.flags.writeable  # shared by every call using the voice
    await store.aclose()


async def test_local_voice_without_transcript(tmp_path: Path) -> None:
    write_voice(tmp_path, "bob")
    (tmp_path / "blank.txt").write_text("   \n")
    write_voice(tmp_path, "blank")
    store = VoiceStore(tmp_path)
    assert (await store.get("bob")).transcript is None
    assert (await store.get("blank")).transcript is None
    await store.aclose()


async def test_missing_voice_without_remote_is_not_found(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    with pytest.raises(VoiceNotFound):
        await store.get("nobody")
    assert store.stats()["misses"] == 1
    nodir = VoiceStore(None)
    with pytest.raises(VoiceNotFound):
        await nodir.get("nobody")
    await store.aclose()
    await nodir.aclose()


def test_list_local(tmp_path: Path) -> None:
    write_voice(tmp_path, "b")
    write_voice(tmp_path, "a")
    write_voice(tmp_path / ".remote-cache", "cached")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "bad name.wav").write_bytes(level_wav())
    (tmp_path / "dir.wav").mkdir()
    assert VoiceStore(tmp_path).list_local() == ["a", "b"]
    assert VoiceStore(None).list_local() == []
    assert VoiceStore(tmp_path / "missing").list_local() == []


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_decode_pcm_sample_widths(width: int) -> None:
    audio, rate = decode_wav(level_wav(width=width, level=-0.5, rate=22050))
    assert rate == 22050 and audio.dtype == np.float32
    np.testing.assert_allclose(audio, -0.5, atol=1 / 64)


@pytest.mark.parametrize(("body", "message"), [
    (b"", "not a valid PCM WAV"),
    (b"RIFF\x00\x00\x00\x00WAVEjunk", "not a valid PCM WAV"),
    (b"ID3 this is an mp3" * 20, "not a valid PCM WAV"),
    (level_wav(seconds=0), "empty"),
    (level_wav(seconds=0.2), r"at least 0\.5 s"),
    (level_wav(seconds=61, rate=8000), "the limit is 60 s"),
    (level_wav(level=0.0), "silent"),
])
def test_decode_rejects_unusable_audio(body: bytes, message: str) -> None:
    with pytest.raises(InvalidVoiceAudio, match=message):
        decode_wav(body)


async def test_unusable_local_file_names_the_voice(tmp_path: Path) -> None:
    write_voice(tmp_path, "short", seconds=0.1)
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all")
    store = VoiceStore(tmp_path)
    with pytest.raises(InvalidVoiceAudio, match=r"'short'.*at least 0\.5 s"):
        await store.get("short")
    with pytest.raises(InvalidVoiceAudio, match=r"'garbage'.*not a valid PCM WAV"):
        await store.get("garbage")
    assert store.stats()["size"] == 0
    await store.aclose()


# ---- memory LRU, stats, conditioning -----------------------------------------------------------------


async def test_lru_eviction_and_hit_counters(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_voice(tmp_path, name)
    store = VoiceStore(tmp_path, memory_capacity=2)
    first_a = await store.get("a")
    await store.get("b")
    assert await store.get("a") is first_a  # memory hit, "a" becomes most recent
    await store.get("c")  # evicts "b", the least recently used
    stats = store.stats()
    assert stats["memory_hits"] == 1 and stats["local_hits"] == 3
    assert stats["evictions"] == 1 and stats["size"] == 2 and stats["capacity"] == 2
    assert store.cached("a") and store.cached("c") and not store.cached("b")
    await store.get("b")  # back from disk, evicting "a"
    assert store.stats()["local_hits"] == 4 and store.stats()["evictions"] == 2
    assert not store.cached("a")
    assert await store.get("a") is not first_a
    await store.aclose()


async def test_conditioning_lives_and_dies_with_the_cached_voice(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_voice(tmp_path, name)
    store = VoiceStore(tmp_path, memory_capacity=1)
    assert store.set_conditioning("a", "xtts", "emb") is False  # not loaded yet: nothing stored
    voice = await store.get("a")
    embedding = object()
    assert store.set_conditioning("a", "xtts", embedding) is True
    assert store.get_conditioning("a", "xtts") is embedding
    assert voice.conditioning["xtts"] is embedding
    assert store.get_conditioning("a", "other-engine") is None
    await store.get("b")  # evicts "a" and its conditioning
    assert store.get_conditioning("a", "xtts") is None
    assert (await store.get("a")).conditioning == {}
    await store.aclose()


async def test_invalidate_drops_from_memory(tmp_path: Path) -> None:
    write_voice(tmp_path, "a")
    store = VoiceStore(tmp_path)
    await store.get("a")
    assert store.invalidate("a") is True and store.invalidate("a") is False
    await store.get("a")
    assert store.stats()["local_hits"] == 2
    await store.aclose()


def test_constructor_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        VoiceStore(tmp_path, remote_base_url="ftp://voices.test/")
    with pytest.raises(ValueError):
        VoiceStore(tmp_path, memory_capacity=0)


# ---- remote voices -----------------------------------------------------------------------------------


async def test_remote_fetch_ok_and_cached_atomically(
        tmp_path: Path, server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    server.serve_voice("carol", transcript="Hi, I am Carol.\n", channels=2, seconds=2.0, rate=24000)
    voice = await remote_store.get("carol")
    assert voice.source == "remote" and voice.transcript == "Hi, I am Carol."
    assert voice.sample_rate == 24000 and voice.audio.shape == (48000,)
    assert server.requests == {"carol.wav": 1, "carol.txt": 1}
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == ["carol.txt", "carol.wav"]  # no temp files left
    assert (await remote_store.get("carol")) is voice
    stats = remote_store.stats()
    assert stats["fetches"] == 1 and stats["remote_loads"] == 1 and stats["memory_hits"] == 1


async def test_remote_missing_transcript_is_fine(
        server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    server.serve_voice("dave")
    voice = await remote_store.get("dave")
    assert voice.transcript is None and server.requests["dave.txt"] == 1


async def test_local_voice_wins_over_remote(
        tmp_path: Path, server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    write_voice(tmp_path / "voices", "erin")
    server.serve_voice("erin")
    assert (await remote_store.get("erin")).source == "local"
    assert not server.requests


async def test_remote_404_is_not_found_and_not_cached(
        server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    with pytest.raises(VoiceNotFound):
        await remote_store.get("ghost")
    server.serve_voice("ghost")  # appears on the server later: the miss was not remembered
    assert (await remote_store.get("ghost")).source == "remote"
    assert server.requests["ghost.wav"] == 2
    assert remote_store.stats()["misses"] == 1


@pytest.mark.parametrize("path", ["frank.wav", "frank.txt"])
async def test_remote_server_error_is_fetch_error(
        path: str, server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    server.serve_voice("frank", transcript="hello")
    server.routes[path] = lambda _r: httpx.Response(500, text="boom")
    with pytest.raises(VoiceFetchError, match="HTTP 500"):
        await remote_store.get("frank")
    assert remote_store.stats()["fetch_errors"] == 1 and remote_store.stats()["size"] == 0


async def test_remote_redirect_is_not_followed(
        server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    server.routes["gina.wav"] = lambda _r: httpx.Response(
        302, headers={"location": "http://evil.test/x"})
    with pytest.raises(VoiceFetchError, match="HTTP 302"):
        await remote_store.get("gina")


@pytest.mark.parametrize("ctype", ["text/html", "audio/mpeg", "application/json", None])
async def test_remote_wrong_content_type(
        ctype: str | None, server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    headers = {"content-type": ctype} if ctype else {}
    body = level_wav()
    server.routes["hank.wav"] = lambda _r: httpx.Response(200, content=body, headers=headers)
    with pytest.raises(VoiceFetchError, match="content-type"):
        await remote_store.get("hank")


@pytest.mark.parametrize("ctype", ["audio/x-wav", "audio/wave", "application/octet-stream",
                                   "Audio/WAV; charset=binary"])
async def test_remote_accepted_content_types(
        ctype: str, server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    body = level_wav()
    server.routes["ivy.wav"] = lambda _r: httpx.Response(
        200, content=body, headers={"content-type": ctype})
    assert (await remote_store.get("ivy")).source == "remote"


async def test_remote_oversize_declared_length(
        tmp_path: Path, server: FakeVoiceServer, http: httpx.AsyncClient) -> None:
    server.serve_voice("jay", seconds=2.0)  # 64 kB
    store = VoiceStore(None, remote_base_url=BASE, http_client=http, cache_dir=tmp_path / "c",
                       max_bytes=10_000)
    with pytest.raises(VoiceFetchError, match="limit"):
        await store.get("jay")
    assert not (tmp_path / "c").exists()
    await store.aclose()


async def test_remote_oversize_body_is_cut_off_while_streaming(
        server: FakeVoiceServer, http: httpx.AsyncClient) -> None:
    chunks_sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield level_wav()[:44]
        while True:
            chunks_sent += 1
            yield b"\x01\x00" * 512  # 1 kB per chunk, no content-length

    server.routes["kim.wav"] = lambda _r: httpx.Response(
        200, content=endless(), headers={"content-type": "audio/wav"})
    store = VoiceStore(None, remote_base_url=BASE, http_client=http, max_bytes=8 * 1024)
    with pytest.raises(VoiceFetchError, match="larger than the limit of 8192 bytes"):
        await store.get("kim")
    assert chunks_sent <= 10  # stopped right after the limit, not read to the end
    await store.aclose()


async def test_remote_invalid_wav_is_rejected_and_not_cached(
        tmp_path: Path, server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    server.routes["liz.wav"] = lambda _r: httpx.Response(
        200, content=b"<html>not audio</html>", headers={"content-type": "audio/wav"})
    with pytest.raises(InvalidVoiceAudio, match="not a valid PCM WAV"):
        await remote_store.get("liz")
    server.routes["max.wav"] = lambda _r: httpx.Response(
        200, content=level_wav(seconds=0.1), headers={"content-type": "audio/wav"})
    with pytest.raises(VoiceFetchError, match=r"at least 0\.5 s"):
        await remote_store.get("max")
    assert not (tmp_path / "cache").exists()


async def test_remote_timeout_slow_response(server: FakeVoiceServer, http: httpx.AsyncClient) -> None:
    async def slow(_r: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, content=level_wav(), headers={"content-type": "audio/wav"})

    server.routes["ned.wav"] = slow
    store = VoiceStore(None, remote_base_url=BASE, http_client=http, fetch_timeout_s=0.2)
    with pytest.raises(VoiceFetchError, match="timed out"):
        await store.get("ned")
    await store.aclose()


@pytest.mark.slow
async def test_remote_timeout_trickling_body(server: FakeVoiceServer, http: httpx.AsyncClient) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.02)
            yield b"\x00\x01"

    server.routes["ola.wav"] = lambda _r: httpx.Response(
        200, content=trickle(), headers={"content-type": "audio/wav"})
    store = VoiceStore(None, remote_base_url=BASE, http_client=http, fetch_timeout_s=0.3)
    with pytest.raises(VoiceFetchError, match="timed out"):  # the whole fetch is bounded
        await store.get("ola")
    await store.aclose()


@pytest.mark.parametrize("exc", [httpx.ReadTimeout("read timed out"), httpx.ConnectError("refused")])
async def test_remote_transport_errors(
        exc: Exception, server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    def fail(_r: httpx.Request) -> httpx.Response:
        raise exc

    server.routes["pat.wav"] = fail
    with pytest.raises(VoiceFetchError, match="voice server"):
        await remote_store.get("pat")


async def test_disk_cache_serves_a_second_store_without_fetching(
        tmp_path: Path, server: FakeVoiceServer, http: httpx.AsyncClient) -> None:
    server.serve_voice("quinn", transcript="Quinn here.")
    first = VoiceStore(tmp_path / "voices", remote_base_url=BASE, http_client=http)
    fetched = await first.get("quinn")
    await first.aclose()
    assert (tmp_path / "voices" / ".remote-cache" / "quinn.wav").is_file()  # default cache dir

    second = VoiceStore(tmp_path / "voices", remote_base_url=BASE, http_client=http)
    voice = await second.get("quinn")
    assert voice.source == "disk_cache" and voice.transcript == "Quinn here."
    np.testing.assert_array_equal(voice.audio, fetched.audio)
    assert server.requests["quinn.wav"] == 1  # no second fetch
    assert second.stats()["disk_cache_hits"] == 1 and second.stats()["fetches"] == 0
    assert second.list_local() == []  # cached remote voices are not local voices
    await second.aclose()


async def test_corrupt_cache_entry_is_dropped_and_refetched(
        tmp_path: Path, server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "rex.wav").write_bytes(b"garbage")
    server.serve_voice("rex")
    assert (await remote_store.get("rex")).source == "remote"
    decode_wav(tmp_path / "cache" / "rex.wav")  # replaced by the valid download


async def test_temp_cache_dir_is_removed_on_close(
        server: FakeVoiceServer, http: httpx.AsyncClient) -> None:
    server.serve_voice("sam")
    store = VoiceStore(None, remote_base_url=BASE, http_client=http)
    await store.get("sam")
    temp_dir = store._temp_cache_dir
    assert temp_dir is not None and (temp_dir / "sam.wav").is_file()
    await store.aclose()
    assert not temp_dir.exists()
    assert not http.is_closed  # a shared client is left open for its owner


async def test_owned_client_is_closed(server: FakeVoiceServer, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[httpx.AsyncClient] = []
    real_client = httpx.AsyncClient

    def make_client(**kwargs) -> httpx.AsyncClient:
        client = real_client(transport=httpx.MockTransport(server.handle), **kwargs)
        created.append(client)
        return client

    monkeypatch.setattr(voices_mod.httpx, "AsyncClient", make_client)
    server.serve_voice("tia")
    store = VoiceStore(None, remote_base_url=BASE)
    await store.get("tia")
    await store.aclose()
    assert len(created) == 1 and created[0].is_closed
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("tia")


# ---- single flight -----------------------------------------------------------------------------------


async def test_concurrent_gets_share_one_fetch(
        server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    release = asyncio.Event()
    body = level_wav()

    async def gated(_r: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, content=body, headers={"content-type": "audio/wav"})

    server.routes["uma.wav"] = gated
    waiters = [asyncio.create_task(remote_store.get("uma")) for _ in range(10)]
    await eventually(lambda: server.requests["uma.wav"] == 1 and remote_store.stats()["coalesced"] == 9,
                     what="every waiter joined the one fetch")
    assert remote_store.stats()["in_flight"] == 1
    release.set()
    results = await asyncio.gather(*waiters)
    assert all(v is results[0] for v in results)
    assert server.requests["uma.wav"] == 1
    stats = remote_store.stats()
    assert stats["fetches"] == 1 and stats["coalesced"] == 9 and stats["in_flight"] == 0


async def test_shared_failure_reaches_every_waiter_and_is_not_cached(
        server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    release = asyncio.Event()

    async def gated_error(_r: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(503, text="busy")

    server.routes["val.wav"] = gated_error
    waiters = [asyncio.create_task(remote_store.get("val")) for _ in range(5)]
    await eventually(lambda: server.requests["val.wav"] == 1 and remote_store.stats()["coalesced"] == 4,
                     what="every waiter joined the one fetch")
    release.set()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(o, VoiceFetchError) and "503" in str(o) for o in outcomes)
    assert server.requests["val.wav"] == 1

    server.serve_voice("val")  # the server recovers: the next get fetches again
    assert (await remote_store.get("val")).source == "remote"
    assert server.requests["val.wav"] == 2


async def test_cancelled_waiter_does_not_cancel_the_shared_load(
        server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    release = asyncio.Event()
    body = level_wav()

    async def gated(_r: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, content=body, headers={"content-type": "audio/wav"})

    server.routes["wes.wav"] = gated
    impatient = asyncio.create_task(remote_store.get("wes"))
    patient = asyncio.create_task(remote_store.get("wes"))
    await eventually(lambda: server.requests["wes.wav"] == 1 and remote_store.stats()["coalesced"] == 1,
                     what="both waiting on the one fetch")
    impatient.cancel()
    release.set()
    assert (await patient).id == "wes"
    assert impatient.cancelled()
    assert server.requests["wes.wav"] == 1


# ---- preload -----------------------------------------------------------------------------------------


async def test_preload_mixed_results(
        tmp_path: Path, server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    write_voice(tmp_path / "voices", "local1", transcript="hi")
    server.serve_voice("remote1")
    server.routes["broken.wav"] = lambda _r: httpx.Response(500)
    ids = ["local1", "remote1", "missing", "broken", "../etc/passwd", "local1"]
    results = await remote_store.preload(ids)
    assert list(results) == ["local1", "remote1", "missing", "broken", "../etc/passwd"]
    assert all(isinstance(r, PreloadResult) for r in results.values())
    assert results["local1"].ok and results["local1"].source == "local"
    assert results["remote1"].ok and results["remote1"].source == "remote"
    assert not results["missing"].ok and results["missing"].error_type == "VoiceNotFound"
    assert not results["broken"].ok and "HTTP 500" in (results["broken"].error or "")
    assert results["../etc/passwd"].error_type == "InvalidVoiceId"
    assert all(r.elapsed_ms >= 0 for r in results.values())
    assert results["broken"].as_dict()["ok"] is False and "error" in results["broken"].as_dict()
    assert results["local1"].as_dict() == {"ok": True, "source": "local",
                                           "elapsed_ms": round(results["local1"].elapsed_ms, 2)}

    again = await remote_store.preload(["local1", "remote1"])
    assert {r.source for r in again.values()} == {"memory"}
    assert await remote_store.preload([]) == {}


async def test_preload_runs_in_parallel(server: FakeVoiceServer, remote_store: VoiceStore) -> None:
    body = level_wav()
    release = asyncio.Event()
    waiting = 0

    async def held(_r: httpx.Request) -> httpx.Response:
        nonlocal waiting
        waiting += 1
        await release.wait()
        return httpx.Response(200, content=body, headers={"content-type": "audio/wav"})

    for i in range(6):
        server.routes[f"p{i}.wav"] = held
    preload = asyncio.create_task(remote_store.preload([f"p{i}" for i in range(6)]))
    # all six are asked for before any answers: sequential fetches would stop at one
    await eventually(lambda: waiting == 6, what="six fetches in flight at once")
    release.set()
    results = await preload
    assert all(r.ok for r in results.values())
    assert remote_store.stats()["fetches"] == 6


# ---- the disk cache's size limit (issue 10, finding 2) -----------------------------------------------
async def test_the_disk_cache_keeps_under_its_limit_evicting_the_least_recently_used(
        tmp_path: Path, server: FakeVoiceServer, http: httpx.AsyncClient) -> None:
    """A flood of distinct voice ids cannot fill the disk: past the limit the voice written or
    served longest ago goes first."""
    size = len(level_wav(seconds=0.5))
    cache = tmp_path / "cache"
    store = VoiceStore(None, remote_base_url=BASE, http_client=http, cache_dir=cache,
                       memory_capacity=1, disk_cache_max_bytes=int(size * 2.5))
    try:
        for voice_id in ("v1", "v2"):
            server.serve_voice(voice_id, seconds=0.5)
            await store.get(voice_id)
        old = time.time() - 60
        os.utime(cache / "v1.wav", (old, old))
        os.utime(cache / "v2.wav", (old - 60, old - 60))
        store.invalidate("v2")  # out of memory: the next get reads the disk cache
        assert (await store.get("v2")).source == "disk_cache"  # served now: the most recent
        server.serve_voice("v3", seconds=0.5)
        await store.get("v3")
        assert sorted(p.name for p in cache.glob("*.wav")) == ["v2.wav", "v3.wav"]
        assert store.stats()["disk_evictions"] == 1
        for i in range(4, 12):
            server.serve_voice(f"v{i}", seconds=0.5)
            await store.get(f"v{i}")
        assert sum(p.stat().st_size for p in cache.iterdir()) <= size * 2.5
    finally:
        await store.aclose()
