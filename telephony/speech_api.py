"""The bridge as an OpenAI-compatible speech server: ``POST /v1/audio/speech``, ``GET /v1/models``.

Any OpenAI TTS client (or a second bridge's ``openai`` engine) can use the bridge's own engine.
The request is OpenAI's; the differences are documented in README ("OpenAI-compatible speech
endpoint"): formats pcm / wav / mulaw only, ``wav`` when ``response_format`` is omitted (OpenAI's
default, mp3, is not encoded here), unknown body fields are ignored (named in ``X-Ignored-Fields``)
because clients send vendor flags, and ``voice`` is optional (the bridge's default voice).

Access: with ``VOICE_BRIDGE_API_KEY`` every ``/v1`` request needs ``Authorization: Bearer <key>``;
without a key the routes are open only under ``--insecure-dev``, and otherwise answer 403 with how
to enable them. Every error here has OpenAI's shape ``{"error": {"message", "type", "param",
"code"}}`` (not the bridge's own), because OpenAI clients parse exactly that; its status and type
come from the error's class in the one tree (``openai_error``), like every other endpoint's.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from telephony.access import bearer_matches, read_body
from telephony.config import Settings
from telephony.errors import (
    AccessDenied,
    AuthRequired,
    BadRequest,
    Busy,
    MethodNotAllowed,
    NoSuchThing,
    PeerFailed,
    Refusal,
    error_code,
)
from telephony.services import Bridge
from telephony.speech_stream import (
    FORMATS,
    UNSUPPORTED_FORMATS,
    AudioStreamResponse,
    ClientGone,
    first_bytes,
    prepend,
    speech_audio,
    sse_events,
)
from telephony.untrusted import has_lone_surrogate
from tts_core.engines import EngineError, UnsupportedVoiceError
from tts_core.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
    Unprocessable,
    VoiceBridgeError,
)
from tts_core.presets import Preset
from tts_core.text.segmenter import segment_text
from tts_core.voices import InvalidVoiceId, Voice, VoiceFetchError, VoiceNotFound

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

MAX_BODY_BYTES = 64 * 1024
"""Refused (413) before it is read: 4096 characters of input are at most 16 KiB of UTF-8."""
BODY_TIMEOUT_S = 10.0
IN_FLIGHT_PER_SLOT = 4
"""Speech requests admitted per engine slot (``VOICE_BRIDGE_ENGINE_CONCURRENCY``), at least 8."""
MAX_INPUT_CHARS = 4096
"""OpenAI's limit on ``input``."""
DEFAULT_FORMAT = "wav"
MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""Listed by /v1/models so clients that check the model find theirs; every name is accepted."""
_CREATED = int(time.time())
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def openai_error(exc: VoiceBridgeError) -> JSONResponse:
    """An error of the tree in OpenAI's shape, status and type from its class: OpenAI clients
    parse ``{"error": {"message", "type", "param", "code"}}`` and expect 400 (not 422) for any
    value they sent wrong."""
    status = 400 if isinstance(exc, Unprocessable) else exc.http_status
    if isinstance(exc, NotFound):
        type_ = "not_found_error"
    elif isinstance(exc, Forbidden):
        type_ = "permission_error"
    elif isinstance(exc, Busy):
        type_ = "rate_limit_error"
    elif isinstance(exc, InvalidInput | Unauthorized):
        type_ = "invalid_request_error"
    else:  # UpstreamFailed, Overloaded, ConfigurationError
        type_ = "server_error"
    param = exc.param if isinstance(exc, Refusal) else None
    headers = exc.headers if isinstance(exc, Refusal) else None
    return JSONResponse(status_code=status, headers=headers or None, content={
        "error": {"message": exc.message, "type": type_, "param": param, "code": error_code(exc)}})


class SpeechBody(BaseModel):
    """OpenAI's speech request; unknown fields are ignored (reported in ``X-Ignored-Fields``)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    """Any name: the bridge has one engine."""
    input: str
    voice: str | None = None
    """A built-in voice of the engine or a stored voice id; OpenAI's ``{"id": ...}`` form too."""
    response_format: str = DEFAULT_FORMAT
    speed: Annotated[float, Field(strict=True, ge=0.25, le=4.0)] | None = None
    stream_format: Literal["audio", "sse"] = "audio"
    stream: Annotated[bool, Field(strict=True)] | None = None
    """Accepted (some clients send it to ask for streaming); the response always streams."""
    instructions: str | None = None
    """Accepted and ignored: no engine here takes style instructions."""

    @field_validator("voice", mode="before")
    @classmethod
    def _voice_object(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"id"}:
            return value["id"]
        return value


# ---- routes ------------------------------------------------------------------------------------
Handler = Callable[[Request], Awaitable[Response]]


def _openai_errors(handler: Handler) -> Handler:
    """Run a /v1 handler so that every failure leaves as an OpenAI error, never the app's shape."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except VoiceBridgeError as exc:
            if exc.http_status >= 500:
                log.warning("%s: %s: %s", request.url.path, type(exc).__name__, exc)
            return openai_error(exc)
        except Exception:  # a bug: logged with its traceback, answered 500 in OpenAI's shape
            log.exception("unhandled error in %s", request.url.path)
            return openai_error(VoiceBridgeError("internal server error"))

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


@router.post("/audio/speech")
@_openai_errors
async def create_speech(request: Request) -> Response:
    """Synthesise ``input`` and stream it as it is rendered."""
    bridge = _authorize(request)
    release = _in_flight(request, bridge).acquire()
    try:
        response = await _speech_response(request, bridge, on_close=release)
    except BaseException:
        release()
        raise
    if not isinstance(response, AudioStreamResponse):
        release()
    return response


async def _speech_response(request: Request, bridge: Bridge, *, on_close: Callable[[], None]) -> Response:
    data = _parse_json(await _read_body(request, MAX_BODY_BYTES))
    body = _validate(data)
    fmt = FORMATS.get(body.response_format)
    if fmt is None:
        if body.response_format in UNSUPPORTED_FORMATS:
            raise BadRequest(f"response_format {body.response_format!r} is not supported by this "
                             f"server; use one of {', '.join(FORMATS)}",
                             param="response_format", code="unsupported_value")
        raise BadRequest(f"invalid response_format {body.response_format!r}; supported: "
                         f"{', '.join(FORMATS)}", param="response_format", code="invalid_value")
    if not body.input.strip():
        raise BadRequest("input is empty", param="input", code="invalid_value")
    if len(body.input) > MAX_INPUT_CHARS:
        raise BadRequest(f"input is {len(body.input)} characters; the limit is {MAX_INPUT_CHARS}",
                         param="input", code="string_above_max_length")
    voice_id, voice = await _resolve_voice(bridge, body.voice)
    preset = _preset(bridge, body.speed)

    audio = speech_audio(bridge.engine, segment_text(body.input, preset.segmentation),
                         voice_id=voice_id, preset=preset, voice=voice,
                         encoder=fmt.make_encoder(bridge.engine.sample_rate))
    try:
        first = await first_bytes(audio, request)
    except ClientGone:
        log.info("speech client left before the first audio byte")
        return Response(status_code=499)
    except UnsupportedVoiceError as exc:
        raise BadRequest(str(exc), param="voice", code="unsupported_voice") from None
    except EngineError as exc:
        bridge.metrics.error("speech_api_engine")
        raise PeerFailed(f"synthesis failed: {exc}",
                         code="engine_error") from None
    if first is None:
        bridge.metrics.error("speech_api_engine")
        raise PeerFailed("the engine produced no audio for this input",
                         code="engine_error")

    headers = {"X-Sample-Rate": str(fmt.sample_rate), "Cache-Control": "no-store",
               "X-Accel-Buffering": "no"}
    ignored = _ignored_fields(data)
    if ignored:
        headers["X-Ignored-Fields"] = ignored
    first = fmt.header + first
    if body.stream_format == "sse":
        return AudioStreamResponse(sse_events(first, audio), media_type="text/event-stream",
                                   headers=headers, on_close=on_close)
    return AudioStreamResponse(prepend(first, audio), media_type=fmt.media_type, headers=headers,
                               on_close=on_close)


@router.get("/models")
@_openai_errors
async def list_models(request: Request) -> Response:
    """OpenAI's model list: the usual TTS model names and the engine's own; all mean this engine."""
    bridge = _authorize(request)
    return JSONResponse({"object": "list", "data": [_model(m) for m in _model_ids(bridge)]})


@router.get("/models/{model_id}")
@_openai_errors
async def retrieve_model(request: Request) -> Response:
    bridge = _authorize(request)
    model_id = request.path_params["model_id"]
    if model_id not in _model_ids(bridge):
        raise NoSuchThing(f"The model {model_id!r} does not exist", param="model",
                          code="model_not_found")
    return JSONResponse(_model(model_id))


@router.get("/audio/voices")
@_openai_errors
async def list_voices(request: Request) -> Response:
    """Voices ``voice`` may name (not an OpenAI endpoint; several compatible servers have one)."""
    bridge = _authorize(request)
    data = [{"id": v["id"], "object": "voice", "kind": v["kind"],
             "usable": v.get("usable", True)} for v in bridge.list_voices()]
    return JSONResponse({"object": "list", "data": data, "default": bridge.default_voice})


_KNOWN_PATHS = {"audio/speech": "POST", "models": "GET", "audio/voices": "GET"}


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                  include_in_schema=False)
@_openai_errors
async def unknown_route(request: Request) -> Response:
    """Any other /v1 path or method: an OpenAI-shaped 404/405 instead of the app's own shape.

    Registered last in this router; a /v1 route added in another router must be included first.
    """
    _authorize(request)
    path = request.path_params["path"].strip("/")
    if path in _KNOWN_PATHS:
        raise MethodNotAllowed(f"{request.method} is not allowed on /v1/{path}; use {_KNOWN_PATHS[path]}",
                               code="method_not_allowed", headers={"Allow": _KNOWN_PATHS[path]})
    raise NoSuchThing(f"Unknown endpoint /v1/{path}", code="unknown_url")


# ---- helpers -----------------------------------------------------------------------------------
class InFlight:
    """Speech requests being served or waiting for the engine, refused (429) beyond ``limit``.

    The engine serves ``engine_concurrency`` at once and queues the rest; without this bound a
    burst of requests would queue without end, each holding a connection and a task.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def acquire(self) -> Callable[[], None]:
        """Take a place; returns its release (idempotent). Raises the 429."""
        if self.count >= self.limit:
            raise Busy(f"server busy: {self.count} speech requests in flight (limit {self.limit}); "
                       "retry shortly or use another server", headers={"Retry-After": "1"})
        self.count += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.count -= 1

        return release


def _in_flight(request: Request, bridge: Bridge) -> InFlight:
    """The app's counter, created on first use (one per app, like the bridge it belongs to)."""
    limiter = getattr(request.app.state, "speech_in_flight", None)
    if limiter is None:
        limiter = InFlight(max(8, IN_FLIGHT_PER_SLOT * bridge.settings.engine_concurrency))
        request.app.state.speech_in_flight = limiter
    return limiter


def access_summary(settings: Settings) -> str:
    """One line for the start-up log: who may use /v1."""
    if settings.api_key:
        return "/v1 speech API: on, Bearer VOICE_BRIDGE_API_KEY required"
    if settings.insecure_dev:
        return "/v1 speech API: OPEN without a key (--insecure-dev); set VOICE_BRIDGE_API_KEY"
    return "/v1 speech API: off (403); set VOICE_BRIDGE_API_KEY to serve it"


def _authorize(request: Request) -> Bridge:
    """The bridge, if this request may use /v1; raises the 401 / 403 otherwise."""
    bridge: Bridge = request.app.state.bridge
    key = bridge.settings.api_key
    if key:
        if not bearer_matches(request.headers, key):  # constant time (telephony/access.py)
            raise AuthRequired("Incorrect or missing API key: send 'Authorization: Bearer <key>' "
                               "with the server's VOICE_BRIDGE_API_KEY", code="invalid_api_key",
                               headers={"WWW-Authenticate": 'Bearer realm="voice-bridge"'})
    elif not bridge.settings.insecure_dev:
        raise AccessDenied("The OpenAI-compatible API is disabled: set VOICE_BRIDGE_API_KEY on the "
                           "server (clients then send 'Authorization: Bearer <key>'), or run with "
                           "--insecure-dev for local development",
                           code="api_disabled")
    return bridge


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) exceeds ``limit``, and
    with 408 if it does not arrive within ``BODY_TIMEOUT_S`` (a trickling client holds a
    connection)."""
    return await read_body(request, limit, BODY_TIMEOUT_S)


def _parse_json(raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadRequest("request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int over 4,300 digits
        raise BadRequest(f"We could not parse the JSON body of your request: {str(exc)[:200]}",
                         code="invalid_json") from None
    if has_lone_surrogate(data):
        raise BadRequest("The JSON body of your request holds a lone UTF-16 surrogate "
                         "(not valid Unicode).", code="invalid_json")
    return data


def _validate(data: Any) -> SpeechBody:
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        return SpeechBody.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"]) or None
        if error["type"] == "missing":
            raise BadRequest(f"Missing required parameter: {param!r}", param=param,
                             code="missing_required_parameter") from None
        raise BadRequest(f"Invalid {param!r}: {error['msg']}", param=param,
                         code="invalid_value") from None


async def _resolve_voice(bridge: Bridge, requested: str | None) -> tuple[str, Voice | None]:
    try:
        voice_id, voice = await bridge.resolve_voice(requested)
    except InvalidVoiceId as exc:
        raise BadRequest(str(exc), param="voice", code="invalid_value") from None
    except VoiceNotFound:
        known = [v["id"] for v in bridge.list_voices()][:20]
        raise NoSuchThing(f"voice {requested!r} not found; available: {', '.join(known) or 'none'}",
                          param="voice", code="voice_not_found") from None
    except VoiceFetchError as exc:
        raise PeerFailed(f"voice {requested!r} could not be loaded: {exc}",
                         param="voice", code="voice_fetch_failed") from None
    if voice is not None and not bridge.engine.supports_cloning:
        raise BadRequest(f"engine {bridge.engine.name!r} cannot speak stored (cloned) voices; use "
                         f"one of {', '.join(bridge.engine.builtin_voices())}",
                         param="voice", code="unsupported_voice")
    return voice_id, voice


def _preset(bridge: Bridge, speed: float | None) -> Preset:
    """The default preset, with OpenAI's ``speed`` when given (range checked by ``SpeechBody``)."""
    preset = bridge.presets.get(bridge.settings.default_preset)
    return preset if speed is None else preset.model_copy(update={"speed": speed})


def _ignored_fields(data: dict[str, Any]) -> str:
    names = sorted(k for k in data if k not in SpeechBody.model_fields)
    shown = [n for n in names if _FIELD_NAME.fullmatch(n)][:16]
    hidden = len(names) - len(shown)
    return ",".join(shown + ([f"+{hidden} more"] if hidden else []))


def _model_ids(bridge: Bridge) -> list[str]:
    return list(dict.fromkeys((*MODEL_ALIASES, bridge.engine.name)))


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "voice-bridge"}
