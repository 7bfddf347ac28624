"""Remote GPU voices: a fleet of OpenAI-compatible ``POST /v1/audio/speech`` servers.

vLLM-Omni, Kokoro-FastAPI, chatterbox-tts-api, speaches, LocalAI and others speak this API with
streamed PCM. One pooled ``httpx.AsyncClient`` streams each utterance from the least-busy server and
feeds the samples on as they arrive (``speech_response`` copes with the servers' differences).

Rules that keep a call's audio clean when servers misbehave:

* The first-byte timeout runs until the first *audio* byte, not the response headers (some servers
  send headers seconds before they have audio). After it, each read must come within the stall
  timeout.
* An utterance whose server failed before any audio came is retried once on another server; after
  audio has been delivered it never is (the caller would hear the start twice). The failure is
  then one ``EngineError`` for that utterance, and the call goes on.
* A failing server is skipped for a back-off period and probed again (``tts_core.fleet``).
* Closing the stream (the utterance was cancelled: barge-in, hang-up) closes the HTTP response, and
  so the connection, so the server stops generating at once and frees its GPU.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from typing import TypeAlias

import httpx
import numpy as np

from tts_core.audio.arrays import FloatAudio
from tts_core.audio.resampler import StreamResampler
from tts_core.engines.base import Engine, EngineError, SpeechRequest
from tts_core.engines.speech_response import (
    PcmDecoder,
    SpeechBodyError,
    SseAudioDecoder,
    describe_error_body,
)
from tts_core.fleet import Fleet, NoServerAvailable, ServerFailed, ServerSnapshot, ServerStats
from tts_core.presets import Preset
from tts_core.voices import Voice

log = logging.getLogger(__name__)

OPENAI_PCM_RATE = 24000
STREAM_FIELDS = frozenset({"stream_format", "stream", "speed"})
MAX_ERROR_BODY = 64 * 1024
CONNECTIONS_PER_POOL = 16
SpeechBody: TypeAlias = dict[str, str | bool | int | float]
"""The JSON body of ``POST /audio/speech`` (model, input, voice, response_format, speed...)."""
_REQUEST_ERRORS = frozenset({400, 413, 422})
"""Statuses that blame our request (bad voice, text too long), not the server: no failover, since
every server would refuse it alike, and the server stays in service."""


class OpenAIRemoteEngine(Engine):
    """Streams utterances from OpenAI-compatible TTS servers (``VOICE_BRIDGE_ENGINE=openai``)."""

    name = "openai"
    supports_cloning = False  # voices are the servers' own names; cloning happens server-side

    def __init__(
        self,
        urls: Sequence[str],
        *,
        model: str = "tts-1",
        api_key: str | None = None,
        sample_rate: int | None = None,
        voices: Sequence[str] = (),
        stream_fields: Sequence[str] = ("stream_format", "speed"),
        send_preset_params: bool = False,
        first_byte_timeout_s: float = 5.0,
        stall_timeout_s: float = 5.0,
        backoff_s: float = 5.0,
        max_in_flight_per_server: int = 64,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        unknown = set(stream_fields) - STREAM_FIELDS
        if unknown:
            raise ValueError(f"unknown stream field(s) {sorted(unknown)}")
        self.fleet = Fleet([u.rstrip("/") for u in urls], backoff_s=backoff_s, clock=clock)
        self.model = model
        self.sample_rate = sample_rate or OPENAI_PCM_RATE
        self._rate_fixed = sample_rate is not None
        """A configured rate overrides what servers announce."""
        self._voices = list(voices) or ["alloy"]
        self._stream_fields = frozenset(stream_fields)
        self._send_preset_params = send_preset_params
        self.first_byte_timeout_s = first_byte_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self._headers = {"Accept-Encoding": "identity"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._own_client = http_client is None
        self._clients: list[httpx.AsyncClient] = [http_client] if http_client is not None else []
        self._client_load: list[int] = [0] * len(self._clients)
        self._max_connections = max_in_flight_per_server * len(self.fleet.servers)

    # ---- lifecycle -------------------------------------------------------------------------
    async def load(self) -> None:
        """Open the connection pools. No server is contacted: the bridge starts even while a
        server is down (it is skipped, and ``/health`` shows it).

        Several small pools rather than one big one: httpcore scans every connection of a pool
        each time a request starts or ends (``_assign_requests_to_connections``, with a socket
        readability check per idle connection), so one pool of hundreds of streams spent 20% of
        the bridge's CPU there at 100 calls (py-spy). A request takes the least-busy pool.
        """
        if self._clients:
            return
        shards = max(1, math.ceil(self._max_connections / CONNECTIONS_PER_POOL))
        size = math.ceil(self._max_connections / shards)
        self._clients = [httpx.AsyncClient(
            timeout=httpx.Timeout(connect=self.first_byte_timeout_s, read=None, write=10.0,
                                  pool=self.first_byte_timeout_s),
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            follow_redirects=False,
        ) for _ in range(shards)]
        self._client_load = [0] * shards

    async def aclose(self) -> None:
        if self._own_client:
            await asyncio.gather(*(client.aclose() for client in self._clients))
            self._clients, self._client_load = [], []

    def builtin_voices(self) -> list[str]:
        return list(self._voices)

    @property
    def busy_slots(self) -> int:
        return sum(s.in_flight for s in self.fleet.servers)

    def servers(self) -> list[ServerSnapshot]:
        return self.fleet.snapshot()

    # ---- synthesis -------------------------------------------------------------------------
    def request_body(self, request: SpeechRequest) -> SpeechBody:
        body: SpeechBody = {"model": self.model, "input": request.text,
                                "voice": request.voice_id, "response_format": "pcm"}
        if "stream_format" in self._stream_fields:
            body["stream_format"] = "audio"
        if "stream" in self._stream_fields:
            body["stream"] = True
        if "speed" in self._stream_fields:
            body["speed"] = request.preset.speed
        if self._send_preset_params:
            for key, value in request.preset.generation_params().items():
                if key != "speed":
                    body.setdefault(key, value)
        return body

    async def _stream(self, request: SpeechRequest) -> AsyncGenerator[FloatAudio, None]:
        if not self._send_preset_params:
            self.note_ignored_params(request.preset, {"speed"} & self._stream_fields)
        body = self.request_body(request)
        tried: list[ServerStats] = []
        while True:
            try:
                server = self.fleet.pick(exclude=tried)
            except NoServerAvailable:
                raise EngineError("no TTS server could take the utterance: "
                                  + "; ".join(f"{s.url}: {s.last_error}" for s in tried)) from None
            tried.append(server)
            try:
                async with aclosing(self._stream_from(server, body)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except ServerFailed as exc:
                if len(tried) >= 2 or len(tried) == len(self.fleet.servers):
                    raise EngineError(str(exc)) from None
                log.warning("TTS server failed before audio, retrying on another: %s", exc)

    async def _stream_from(self, server: ServerStats, body: SpeechBody
                           ) -> AsyncGenerator[FloatAudio, None]:
        """One attempt on one server. Raises ServerFailed before the first audio byte,
        EngineError after it (or for a request the server refused)."""
        if not self._clients:
            await self.load()
        shard = min(range(len(self._clients)), key=self._client_load.__getitem__)
        client = self._clients[shard]
        self._client_load[shard] += 1
        fleet = self.fleet
        fleet.begin(server)
        started = time.monotonic()
        first_byte_at = started + self.first_byte_timeout_s
        delivered = False
        try:
            http_request = client.build_request(
                "POST", f"{server.url}/audio/speech", json=body, headers=self._headers)
            try:
                async with asyncio.timeout_at(_loop_time(first_byte_at)):
                    response = await client.send(http_request, stream=True)
            except (TimeoutError, httpx.TimeoutException):
                raise self._failed(server, "no response within the first-byte timeout "
                                   f"({self.first_byte_timeout_s:g} s)") from None
            except httpx.HTTPError as exc:
                raise self._failed(server, f"cannot reach server: {_describe(exc)}") from None
            try:
                await self._check_status(server, response)
                decoder = _BodyDecoder(response, self.sample_rate, fixed_rate=self._rate_fixed)
                raw = response.aiter_raw()
                while True:
                    deadline = first_byte_at if not delivered else (
                        time.monotonic() + self.stall_timeout_s)
                    try:
                        async with asyncio.timeout_at(_loop_time(deadline)):
                            data = await anext(raw)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        what = (f"stalled for {self.stall_timeout_s:g} s" if delivered else
                                f"no audio within the first-byte timeout ({self.first_byte_timeout_s:g} s)")
                        raise self._failed(server, what, delivered) from None
                    except httpx.HTTPError as exc:
                        raise self._failed(server, f"stream broke: {_describe(exc)}",
                                           delivered) from None
                    try:
                        samples = decoder.feed(data)
                    except SpeechBodyError as exc:
                        raise self._failed(server, str(exc), delivered) from None
                    if samples.size:
                        if not delivered:
                            delivered = True
                            fleet.succeeded(server, time.monotonic() - started)
                        yield samples
                    if decoder.done:
                        break
                tail = decoder.finish()
                if tail.size:
                    if not delivered:
                        fleet.succeeded(server, time.monotonic() - started)
                    delivered = True
                    yield tail
                if not delivered:
                    raise self._failed(server, "answered 200 with no audio")
            finally:
                await response.aclose()  # an unfinished body closes the connection: the server stops
        finally:
            fleet.end(server)
            self._client_load[shard] -= 1

    async def _check_status(self, server: ServerStats, response: httpx.Response) -> None:
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code == 200 and content_type != "application/json":
            return
        raw = b""
        try:
            async with asyncio.timeout(self.stall_timeout_s):
                async for data in response.aiter_raw():
                    raw += data
                    if len(raw) > MAX_ERROR_BODY:
                        break
        except (TimeoutError, httpx.HTTPError):
            pass
        message = f"HTTP {response.status_code}: {describe_error_body(raw)}"
        if response.status_code in _REQUEST_ERRORS:
            raise EngineError(f"TTS server {server.url} refused the utterance: {message}")
        raise self._failed(server, message)

    def _failed(self, server: ServerStats, reason: str, delivered: bool = False) -> Exception:
        """Record a server failure; the exception to raise (retryable only before audio)."""
        self.fleet.failed(server, reason)
        log.warning("TTS server %s failed: %s", server.url, reason)
        if delivered:
            return EngineError(f"TTS server {server.url} failed mid-utterance: {reason}")
        return ServerFailed(f"TTS server {server.url}: {reason}")

    # ---- priming -----------------------------------------------------------------------------
    async def warmup(self, voice_id: str, preset: Preset, voice: Voice | None = None
                     ) -> dict[str, float]:
        """Warm every server at once (its kernels, caches and this process's connection to it).

        Returns milliseconds per server URL; raises EngineError only if no server could warm up.
        """
        body = self.request_body(SpeechRequest("Hello.", voice_id, preset, voice))

        async def one(server: ServerStats) -> float:
            started = time.perf_counter()
            try:
                async with aclosing(self._stream_from(server, body)) as chunks:
                    async for _ in chunks:
                        pass
            except ServerFailed as exc:
                raise EngineError(str(exc)) from None
            return (time.perf_counter() - started) * 1000

        results = await asyncio.gather(*(one(s) for s in self.fleet.servers), return_exceptions=True)
        timings: dict[str, float] = {}
        errors: list[str] = []
        for server, result in zip(self.fleet.servers, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                if not isinstance(result, EngineError):  # a bug: reported, and logged in full
                    log.error("warmup of %s failed unexpectedly", server.url, exc_info=result)
                errors.append(str(result))
            else:
                timings[server.url] = round(result, 2)
        if not timings:
            raise EngineError("no TTS server warmed up: " + "; ".join(errors))
        return timings


class _BodyDecoder:
    """Raw PCM, WAV or SSE body -> float32 at the engine's rate (resampling what a server announces
    at another rate, e.g. 22.05 kHz in ``X-Sample-Rate``)."""

    def __init__(self, response: httpx.Response, engine_rate: int, *, fixed_rate: bool) -> None:
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        self._sse = SseAudioDecoder() if content_type == "text/event-stream" else None
        self._pcm = PcmDecoder()
        self._engine_rate = engine_rate
        self._fixed = fixed_rate
        announced = response.headers.get("x-sample-rate", "").strip()
        self._rate: int | None = None
        if not fixed_rate and announced.isdigit() and 8000 <= int(announced) <= 192000:
            self._rate = int(announced)
        self._resampler: StreamResampler | None = None
        self._rate_known = fixed_rate or self._rate is not None

    @property
    def done(self) -> bool:
        return self._sse is not None and self._sse.done

    def feed(self, data: bytes) -> FloatAudio:
        if self._sse is not None:
            data = self._sse.feed(data)
            if not data:
                return _EMPTY
        samples = self._pcm.feed(data)
        if not self._rate_known and self._pcm.header_rate is not None:
            self._rate = self._pcm.header_rate
        if samples.size or self._pcm.header_rate is not None:
            self._rate_known = True
        return self._convert(samples)

    def finish(self) -> FloatAudio:
        if self._resampler is None:
            return _EMPTY
        return self._resampler.flush()

    def _convert(self, samples: FloatAudio) -> FloatAudio:
        rate = self._engine_rate if self._fixed or self._rate is None else self._rate
        if rate == self._engine_rate:
            return samples
        if self._resampler is None:
            self._resampler = StreamResampler(rate, self._engine_rate)
        return self._resampler.process(samples) if samples.size else _EMPTY


def _loop_time(monotonic_deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running loop's clock (asyncio.timeout_at wants it)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_EMPTY = np.zeros(0, dtype=np.float32)
