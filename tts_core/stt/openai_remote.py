"""Remote recognition: a fleet of OpenAI-compatible ``POST /v1/audio/transcriptions`` servers.

vLLM, speaches, FunASR, LocalAI, a second voice-bridge and OpenAI itself answer this API: one
multipart upload per caller turn (``file`` = a WAV, ``model``, optional ``language``,
``response_format=json``) and a ``{"text": ...}`` answer (``verbose_json`` and plain-text answers
are understood too). GPU servers batch many turns at once, so this is how recognition scales past
what the bridge's own cores decode.

The failover rules are the remote TTS engine's (``tts_core.engines.openai_remote``), through the same
``tts_core.fleet``: the least-busy server takes the turn; a server that fails (refused connection,
5xx, 429, a timeout, an unreadable answer) is backed off and probed later, and the turn is retried
once on another server. A transcript has no partial delivery, so that retry is always safe; an
answer that blames the request (400, 413, 415, 422) is not retried, since every server would refuse
it alike. The API key travels only in the ``Authorization`` header and is never logged.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import wave
from collections.abc import Callable, Sequence

import httpx
import numpy as np
import soxr

from tts_core.audio.arrays import FloatAudio
from tts_core.audio.telephony_format import TELEPHONY_RATE
from tts_core.engines.speech_response import describe_error_body
from tts_core.fleet import Fleet, NoServerAvailable, ServerFailed, ServerSnapshot, ServerStats
from tts_core.stt.base import SAMPLE_RATE, Recogniser, RecogniserError, Transcript, check_audio

log = logging.getLogger(__name__)

DEFAULT_MODEL = "whisper-1"
UPLOAD_RATES = (TELEPHONY_RATE, SAMPLE_RATE)
MAX_ANSWER_BYTES = 1 << 20
"""A transcript of a phone turn is a few hundred bytes; anything past 1 MiB is not an answer."""
_REQUEST_ERRORS = frozenset({400, 413, 415, 422})
"""Statuses that blame our request, not the server: not retried, and the server stays in service."""


class RemoteRecogniser(Recogniser):
    """Transcribes caller turns on OpenAI-compatible servers (``VOICE_BRIDGE_STT=openai``)."""

    name = "openai"

    def __init__(
        self,
        urls: Sequence[str],
        *,
        model: str | None = None,
        api_key: str | None = None,
        upload_rate: int = SAMPLE_RATE,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        backoff_s: float = 5.0,
        max_in_flight_per_server: int = 64,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if upload_rate not in UPLOAD_RATES:
            raise RecogniserError(f"upload rate must be one of {UPLOAD_RATES}, not {upload_rate}")
        if timeout_s <= 0:
            raise RecogniserError("timeout_s must be positive")
        self.fleet = Fleet([u.rstrip("/") for u in urls], backoff_s=backoff_s, clock=clock)
        self.model = model or DEFAULT_MODEL
        self.upload_rate = upload_rate
        self.timeout_s = timeout_s
        self.connect_timeout_s = min(connect_timeout_s, timeout_s)
        self._headers = {"Accept": "application/json, text/plain"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._own_client = http_client is None
        self._client = http_client
        self.capacity = max_in_flight_per_server * len(self.fleet.servers)
        """Turns in flight at once across the fleet (the connection pool's size)."""

    # ---- lifecycle -------------------------------------------------------------------------------
    async def load(self) -> None:
        """Open the connection pool. No server is contacted: the bridge starts while a server is
        down (it is skipped, and /health shows it)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                limits=httpx.Limits(max_connections=self.capacity,
                                    max_keepalive_connections=self.capacity),
                follow_redirects=False,
            )

    async def aclose(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    def has_free_slot(self) -> bool:
        return self.busy < self.capacity

    @property
    def busy(self) -> int:
        return sum(s.in_flight for s in self.fleet.servers)

    def servers(self) -> list[ServerSnapshot]:
        return self.fleet.snapshot()

    # ---- recognising -----------------------------------------------------------------------------
    async def transcribe(
        self, audio: FloatAudio, *, language: str | None = None, deadline: float | None = None,
    ) -> Transcript:
        """One turn: tried on the least-busy server, then once on another if that one fails.

        ``deadline`` orders nothing here (the servers schedule their own GPUs); each attempt has
        its own ``timeout_s``. Cancelling closes the request's connection.
        """
        samples = check_audio(audio)
        if samples.size == 0:
            return Transcript("", language or "en", 0.0, 0.0)
        if self._client is None:
            raise RecogniserError("remote recogniser is not loaded")
        duration = samples.size / SAMPLE_RATE
        wav = encode_wav(samples, self.upload_rate)
        data = {"model": self.model, "response_format": "json"}
        if language:
            data["language"] = language
        tried: list[ServerStats] = []
        errors: list[str] = []
        while True:
            try:
                server = self.fleet.pick(exclude=tried)
            except NoServerAvailable:
                break
            tried.append(server)
            started = time.perf_counter()
            try:
                text, answered_language = await self._attempt(server, wav, data)
            except ServerFailed as exc:
                errors.append(str(exc))
                if len(tried) >= 2:
                    break
                continue
            return Transcript(text=text, language=answered_language or language or "en",
                              duration=duration, decode_ms=(time.perf_counter() - started) * 1000)
        raise RecogniserError("no transcription server could take the turn: " + "; ".join(errors))

    async def _attempt(self, server: ServerStats, wav: bytes, data: dict[str, str]
                       ) -> tuple[str, str | None]:
        """POST the turn to one server. Raises ServerFailed (retry elsewhere) or RecogniserError."""
        assert self._client is not None
        fleet = self.fleet
        fleet.begin(server)
        started = time.monotonic()
        try:
            try:
                # The whole exchange, not each read, is bounded: a server trickling bytes must not
                # hold a turn longer than timeout_s.
                async with asyncio.timeout(self.timeout_s):
                    response = await self._client.post(
                        f"{server.url}/audio/transcriptions", headers=self._headers, data=data,
                        files={"file": ("turn.wav", wav, "audio/wav")})
            except (TimeoutError, httpx.TimeoutException):
                raise self._failed(server, f"no answer within {self.timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise self._failed(server, f"cannot reach server: {_describe(exc)}") from None
            body = response.content[:MAX_ANSWER_BYTES]
            if response.status_code != 200:
                message = f"HTTP {response.status_code}: {describe_error_body(body)}"
                if response.status_code in _REQUEST_ERRORS:
                    raise RecogniserError(f"transcription server {server.url} refused the turn: {message}")
                raise self._failed(server, message)
            try:
                text, language = parse_transcription(body, response.headers.get("content-type", ""))
            except ValueError as exc:
                raise self._failed(server, f"unreadable answer: {exc}") from None
            fleet.succeeded(server, time.monotonic() - started)
            return text, language
        finally:
            fleet.end(server)

    def _failed(self, server: ServerStats, reason: str) -> ServerFailed:
        self.fleet.failed(server, reason)
        log.warning("transcription server %s failed: %s", server.url, reason)
        return ServerFailed(f"{server.url}: {reason}")


OpenAIRecogniser = RemoteRecogniser
"""The name ``tts_core.stt.create_recogniser("openai", ...)`` looks up."""


def encode_wav(samples: FloatAudio, rate: int = SAMPLE_RATE) -> bytes:
    """16 kHz float32 mono -> a mono 16-bit WAV file at ``rate`` (16000 or 8000)."""
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, SAMPLE_RATE, rate, quality="HQ").astype(np.float32)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.tobytes())
    return out.getvalue()


_LANGUAGE_NAMES = {"english": "en", "french": "fr", "german": "de", "spanish": "es", "italian": "it",
                   "portuguese": "pt", "dutch": "nl", "japanese": "ja", "chinese": "zh",
                   "russian": "ru", "polish": "pl", "turkish": "tr", "korean": "ko"}


def parse_transcription(body: bytes, content_type: str) -> tuple[str, str | None]:
    """(text, ISO 639-1 language or None) from a ``json``, ``verbose_json`` or plain-text answer.

    Raises ValueError for anything else (a 200 whose body holds no transcript is the server's
    fault, and counts against it).
    """
    kind = content_type.split(";")[0].strip().lower()
    stripped = body.strip()
    looks_json = kind.endswith("json") or stripped.startswith(b"{")
    if not looks_json:
        if kind not in ("", "text/plain"):
            raise ValueError(f"content type {kind!r} is not a transcript")
        try:
            return body.decode("utf-8").strip(), None
        except UnicodeDecodeError:
            raise ValueError("plain-text answer is not UTF-8") from None
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ValueError(f"not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ValueError(f"JSON without a 'text' string: {body[:120]!r}")
    language = data.get("language")
    code: str | None = None
    if isinstance(language, str):
        language = language.strip().lower()
        code = language if len(language) == 2 else _LANGUAGE_NAMES.get(language)
    return data["text"].strip(), code


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
