"""The bridge as an OpenAI-compatible transcription server: ``POST /v1/audio/transcriptions``.

Served by the bridge's configured recogniser (embedded Whisper by default), so any OpenAI client, or
another bridge with ``VOICE_BRIDGE_STT=openai``, can use its recognition. The request is OpenAI's
multipart form: ``file`` (a WAV: any common rate, mono or multichannel, PCM / float / G.711),
``model`` (any name), optional ``language``, ``response_format`` ``json`` | ``text`` |
``verbose_json``; other fields (``prompt``, ``temperature`` ...) are accepted and ignored (named in
``X-Ignored-Fields``). Access and error shapes are the speech endpoint's (``speech_api``): the same
API-key rule and OpenAI-shaped errors, from the same helpers.

Uploads are capped at OpenAI's 25 MB while they stream in (a declared larger ``Content-Length`` is
refused before any of the body is read), parsed as they arrive, and decoded off the event loop.
Audio longer than the recogniser's 30 s window is recognised in pieces cut at quiet moments.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import anyio
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from telephony.errors import (
    BadRequest,
    MethodNotAllowed,
    PeerFailed,
    RequestTimeout,
    RequestTooLarge,
    Unavailable,
)
from telephony.services import Bridge
from telephony.speech_api import (
    IN_FLIGHT_PER_SLOT,
    InFlight,
    _authorize,
    _openai_errors,
    _read_body,
)
from tts_core.audio.wav_file import AudioFileError, read_wav, to_rate
from tts_core.stt import SAMPLE_RATE, Recogniser, RecogniserError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
T = TypeVar("T")

MAX_FILE_BYTES = 25 * 1024 * 1024
"""OpenAI's limit on the uploaded file."""
FORM_OVERHEAD_BYTES = 64 * 1024
"""Room for the other fields and the multipart framing around the file."""
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32
UPLOAD_TIMEOUT_S = 60.0
"""The whole body must arrive within this (a trickling client holds a connection and memory)."""
MIN_AUDIO_S = 0.1
MAX_AUDIO_S = 600.0
"""Ten minutes per request: recognition here runs on the bridge's own cores, shared with calls."""
PIECE_S = 30.0
"""The recogniser's window; longer audio is cut into pieces no longer than this."""
API_DEADLINE_S = 5.0
"""Priority of API requests for contended recogniser slots: a live caller's turn (deadline now)
goes first, like the partial re-decodes that share this deadline."""
FORMATS = ("json", "text", "verbose_json")
UNSUPPORTED_FORMATS = ("srt", "vtt", "diarized_json")
KNOWN_FIELDS = frozenset({"file", "model", "language", "response_format"})
_LANGUAGE = re.compile(r"[a-z]{2,3}")
_FIELD_NAME = re.compile(r"[\w.\[\]-]{1,64}")
_LANGUAGE_NAMES = {"en": "english", "fr": "french", "de": "german", "es": "spanish", "it": "italian",
                   "pt": "portuguese", "nl": "dutch", "ja": "japanese", "zh": "chinese"}


@router.post("/audio/transcriptions")
@_openai_errors
async def create_transcription(request: Request) -> Response:
    """Recognise an uploaded WAV with the bridge's recogniser."""
    bridge = _authorize(request)
    recogniser = bridge.recogniser
    if recogniser is None:
        raise Unavailable("speech recognition is off on this server (VOICE_BRIDGE_STT=off)",
                          code="stt_disabled")
    release = _in_flight(request, bridge).acquire()
    try:
        form = await read_form(request)
        model = form.fields.get("model", "").strip()
        if form.file is None:
            raise BadRequest("Missing required parameter: 'file'", param="file",
                             code="missing_required_parameter")
        if not model:
            raise BadRequest("Missing required parameter: 'model'", param="model",
                             code="missing_required_parameter")
        response_format = _response_format(form.fields.get("response_format", "json"))
        language = _language(form.fields.get("language"))
        samples = await anyio.to_thread.run_sync(_decode, form.file)
        started = time.perf_counter()
        pieces = await _unless_client_leaves(request, _recognise(recogniser, samples, language))
        if pieces is None:
            log.info("transcription client left before its text was ready")
            return Response(status_code=499)
    finally:
        release()
    duration = samples.size / SAMPLE_RATE
    text = " ".join(p["text"] for p in pieces if p["text"]).strip()
    headers = {"X-Recognition-Ms": f"{(time.perf_counter() - started) * 1000:.0f}"}
    ignored = sorted(k for k in form.fields if k not in KNOWN_FIELDS)
    if ignored:
        headers["X-Ignored-Fields"] = ",".join(n for n in ignored[:16] if _FIELD_NAME.fullmatch(n))
    if response_format == "text":
        return PlainTextResponse(text + "\n", headers=headers)
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if response_format == "json":
        return JSONResponse({"text": text, "usage": usage}, headers=headers)
    spoken = pieces[0]["language"] if pieces else (language or "en")
    return JSONResponse({
        "task": "transcribe", "language": _LANGUAGE_NAMES.get(spoken, spoken),
        "duration": round(duration, 3), "text": text, "usage": usage,
        "segments": [{"id": i, "seek": 0, "start": p["start"], "end": p["end"], "text": p["text"],
                      "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0,
                      "no_speech_prob": 0.0} for i, p in enumerate(pieces)],
    }, headers=headers)


@router.api_route("/audio/transcriptions", methods=["GET", "PUT", "PATCH", "DELETE"],
                  include_in_schema=False)
@_openai_errors
async def transcriptions_wrong_method(request: Request) -> Response:
    _authorize(request)
    raise MethodNotAllowed(f"{request.method} is not allowed on /v1/audio/transcriptions; use POST",
                           code="method_not_allowed", headers={"Allow": "POST"})


# ---- the upload ----------------------------------------------------------------------------------
@dataclass
class Form:
    """A multipart form held in memory: the ``file`` part's bytes and the other fields as text."""

    fields: dict[str, str] = field(default_factory=dict)
    file: bytes | None = None
    filename: str | None = None


class _FormCollector:
    """python-multipart callbacks that keep parts within their limits as they stream in."""

    def __init__(self) -> None:
        self.form = Form()
        self._headers: dict[bytes, bytes] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._name = ""
        self._is_file = False
        self._data = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value_data, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._headers, self._data = {}, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise BadRequest("a multipart part has no name (Content-Disposition: form-data; "
                             "name=...)", code="invalid_multipart")
        self._name = name.decode("utf-8", "replace")
        self._is_file = self._name == "file"
        if self._is_file:
            if self.form.file is not None:
                raise BadRequest("more than one 'file' part", param="file", code="invalid_value")
            filename = options.get(b"filename")
            self.form.filename = filename.decode("utf-8", "replace") if filename else None
        elif len(self.form.fields) >= MAX_FIELDS:
            raise BadRequest(f"more than {MAX_FIELDS} form fields", code="invalid_multipart")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            if len(self._data) + end - start > MAX_FILE_BYTES:
                raise file_too_large()
        elif len(self._data) + end - start > MAX_FIELD_BYTES:
            raise BadRequest(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes",
                             param=self._name, code="invalid_value")
        self._data += data[start:end]

    def _part_end(self) -> None:
        if self._is_file:
            self.form.file = bytes(self._data)
        else:
            self.form.fields[self._name] = self._data.decode("utf-8", "replace")
        self._data = bytearray()


def file_too_large() -> RequestTooLarge:
    return RequestTooLarge(f"Maximum content size limit ({MAX_FILE_BYTES}) exceeded: the file may be "
                           f"at most {MAX_FILE_BYTES // (1024 * 1024)} MB", param="file",
                           code="file_too_large")


async def read_form(request: Request) -> Form:
    """Parse the multipart body as it arrives: 413 as soon as it (or its declared length) is too
    large, 408 if it does not arrive within ``UPLOAD_TIMEOUT_S``, 400 if it is not a form."""
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if media_type == b"application/x-www-form-urlencoded":  # fields but, by construction, no file
        raw = await _read_body(request, FORM_OVERHEAD_BYTES)
        return Form(fields=dict(parse_qsl(raw.decode("utf-8", "replace"))[:MAX_FIELDS]))
    if media_type != b"multipart/form-data" or not boundary:
        raise BadRequest("send the audio as multipart/form-data with a 'file' part (and 'model')",
                         code="invalid_content_type")
    limit = MAX_FILE_BYTES + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise file_too_large()
    collector = _FormCollector()
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        with anyio.fail_after(UPLOAD_TIMEOUT_S):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise file_too_large()
                parser.write(chunk)
        parser.finalize()
    except TimeoutError:
        raise RequestTimeout(f"upload not received within {UPLOAD_TIMEOUT_S:.0f} s",
                             code="request_timeout") from None
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from None
    return collector.form


def _decode(data: bytes) -> np.ndarray:
    """Blocking (runs in a worker thread): WAV -> mono float32 at the recogniser's rate."""
    if not data:
        raise BadRequest("the uploaded file is empty", param="file", code="invalid_value")
    try:
        samples, rate = read_wav(data)
    except AudioFileError as exc:
        raise BadRequest(str(exc), param="file", code="unsupported_file_format") from None
    duration = samples.size / rate
    if duration < MIN_AUDIO_S:
        raise BadRequest(f"Audio file is too short ({duration:.3f} s). Minimum audio length is "
                         f"{MIN_AUDIO_S} seconds.", param="file", code="audio_too_short")
    if duration > MAX_AUDIO_S:
        raise BadRequest(f"audio is {duration:.0f} s long; this server transcribes at most "
                         f"{MAX_AUDIO_S:.0f} s per request", param="file", code="audio_too_long")
    return to_rate(samples, rate, SAMPLE_RATE)


def _response_format(value: str) -> str:
    value = value.strip() or "json"
    if value in FORMATS:
        return value
    if value in UNSUPPORTED_FORMATS:
        raise BadRequest(f"response_format {value!r} is not supported by this server; use one of "
                         f"{', '.join(FORMATS)}", param="response_format", code="unsupported_value")
    raise BadRequest(f"invalid response_format {value!r}; supported: {', '.join(FORMATS)}",
                     param="response_format", code="invalid_value")


def _language(value: str | None) -> str | None:
    """ISO-639-1 (``en``; ``en-US`` is taken as ``en``), or None to let the recogniser decide."""
    if value is None or not value.strip():
        return None
    code = value.strip().lower().split("-")[0].split("_")[0]
    if not _LANGUAGE.fullmatch(code):
        raise BadRequest(f"invalid language {value!r}: use an ISO-639-1 code such as 'en'",
                         param="language", code="invalid_value")
    return code


def split_pieces(samples: np.ndarray, rate: int = SAMPLE_RATE, piece_s: float = PIECE_S,
                 search_s: float = 5.0) -> list[tuple[int, int]]:
    """(start, end) sample ranges no longer than ``piece_s``, each cut at the quietest 20 ms in its
    last ``search_s`` (so a word is rarely split in two)."""
    size, piece, hop = samples.size, int(piece_s * rate), rate // 50
    ranges: list[tuple[int, int]] = []
    start = 0
    while size - start > piece:
        window_start = start + piece - int(search_s * rate)
        frames = samples[window_start: start + piece]
        frames = frames[: frames.size // hop * hop].reshape(-1, hop)
        quietest = int(np.argmin(np.mean(frames * frames, axis=1)))
        cut = window_start + quietest * hop + hop // 2
        ranges.append((start, cut))
        start = cut
    ranges.append((start, size))
    return ranges


async def _recognise(recogniser: Recogniser, samples: np.ndarray, language: str | None
                     ) -> list[dict[str, Any]]:
    """Each piece in turn (one recogniser slot at a time: calls on this bridge share the cores)."""
    pieces: list[dict[str, Any]] = []
    for start, end in split_pieces(samples):
        try:
            transcript = await recogniser.transcribe(samples[start:end], language=language,
                                                     deadline=time.monotonic() + API_DEADLINE_S)
        except RecogniserError as exc:
            raise PeerFailed(f"recognition failed: {exc}",
                             code="recognition_failed") from None
        pieces.append({"start": round(start / SAMPLE_RATE, 3), "end": round(end / SAMPLE_RATE, 3),
                       "text": transcript.text, "language": transcript.language})
    return pieces


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None once the client has disconnected (``work`` is then cancelled:
    pieces not yet decoded are never started, a remote request is closed). The body has been read,
    so the next ASGI message can only be the disconnect."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    working = asyncio.create_task(work, name="transcription")
    watching = asyncio.create_task(disconnected(), name="transcription-disconnect-watch")
    try:
        await asyncio.wait({working, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not working.done():
            working.cancel()
        await asyncio.gather(working, watching, return_exceptions=True)
    if working.cancelled():
        return None
    return working.result()


def _in_flight(request: Request, bridge: Bridge) -> InFlight:
    """Transcriptions being served or queued, refused (429) beyond a few per recogniser slot: each
    holds up to 25 MB of upload and a place in the recogniser's queue."""
    limiter = getattr(request.app.state, "transcription_in_flight", None)
    if limiter is None:
        slots = bridge.settings.stt_concurrency or 2
        limiter = InFlight(max(8, IN_FLIGHT_PER_SLOT * slots))
        request.app.state.transcription_in_flight = limiter
    return limiter
