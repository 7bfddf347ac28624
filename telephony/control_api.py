"""Operator endpoints: ``/warmup``, ``/preload``, ``/health``, ``/voices``, ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from telephony import workers
from telephony.access import HttpProblem, operator_body
from telephony.errors import json_error
from telephony.services import Bridge
from telephony.untrusted import has_lone_surrogate
from telephony.webhook import public_request_url
from tts_core.engines import EngineError
from tts_core.presets import PresetError
from tts_core.voices import InvalidVoiceId, VoiceFetchError, VoiceNotFound

router = APIRouter()
MAX_PRELOAD = 64


class WarmupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voice: str | None = None
    preset: str | None = None


class PreloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voices: list[str] = Field(min_length=1, max_length=MAX_PRELOAD)


async def _json_body(request: Request) -> Any:
    body = await _authorized_body(request)
    if not body:
        return {}
    try:
        data = json.loads(body)
    except RecursionError:  # "[[[[..." deeper than the decoder's stack: not a 500
        raise _BadRequest(json_error(400, "invalid_json", "request body is nested too deeply")) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int over 4,300 digits
        raise _BadRequest(json_error(400, "invalid_json",
                                     f"request body is not JSON: {str(exc)[:200]}")) from None
    if has_lone_surrogate(data):  # would fail every re-encoding of it, far from here
        raise _BadRequest(json_error(400, "invalid_json",
                                     "request body holds a lone UTF-16 surrogate (not valid Unicode)"))
    return data


async def _authorized_body(request: Request) -> bytes:
    """The capped body of an authorized operator request (see telephony/access.py); raises
    ``_BadRequest`` with the 401/403/408/413 before any work."""
    bridge: Bridge = request.app.state.bridge
    settings = bridge.settings
    try:
        return await operator_body(
            request, auth_token=settings.twilio_auth_token, api_key=settings.api_key,
            insecure_dev=settings.insecure_dev, public_url=public_request_url(bridge, request),
            body_timeout_s=settings.body_timeout_s)
    except HttpProblem as exc:
        if exc.status in (401, 403):
            bridge.metrics.error("operator_unauthorized")
        raise _BadRequest(json_error(exc.status, exc.code, exc.message, headers=exc.headers)) from None


class _BadRequest(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def _validation_error(exc: ValidationError) -> JSONResponse:
    problems = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
    return json_error(422, "invalid_request", "request body is invalid", details=problems)


@router.post("/warmup")
async def warmup(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    try:
        body = WarmupRequest.model_validate(await _json_body(request))
        preset = bridge.presets.get(body.preset or bridge.settings.default_preset)
        voice_id, warmup_ms, targets = await bridge.warmup(body.voice, preset)
    except _BadRequest as exc:
        return exc.response
    except ValidationError as exc:
        return _validation_error(exc)
    except PresetError as exc:
        return json_error(422, "unknown_preset", str(exc))
    except InvalidVoiceId as exc:
        return json_error(422, "invalid_voice", str(exc))
    except VoiceNotFound as exc:
        return json_error(404, "voice_not_found", str(exc))
    except VoiceFetchError as exc:
        return json_error(502, "voice_fetch_failed", str(exc))
    except EngineError as exc:
        return json_error(422 if "voice" in str(exc) else 500, "engine_error", str(exc))
    return JSONResponse({"voice": voice_id, "preset": preset.name, "warmup_ms": round(warmup_ms, 2),
                         "targets": targets, "ready": True})


@router.post("/preload")
async def preload(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    try:
        data = await _json_body(request)
        body = PreloadRequest.model_validate({"voices": data} if isinstance(data, list) else data)
    except _BadRequest as exc:
        return exc.response
    except ValidationError as exc:
        return _validation_error(exc)
    started = time.perf_counter()
    builtin = set(bridge.engine.builtin_voices())
    stored = [v for v in body.voices if v not in builtin]
    results = await bridge.voices.preload(stored) if stored else {}
    out: dict[str, Any] = {v: {"ok": True, "source": "builtin"} for v in body.voices if v in builtin}
    for voice_id, result in results.items():
        out[voice_id] = result.as_dict() if hasattr(result, "as_dict") else vars(result)
    return JSONResponse({
        "results": out,
        "ok": all(r.get("ok") for r in out.values()),
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
        "cache": bridge.voices.stats(),
    })


@router.get("/health")
async def health(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    settings = bridge.settings
    body = {
        "status": "ok",
        "engine": {"name": bridge.engine.name, "sample_rate": bridge.engine.sample_rate,
                   "busy_slots": bridge.engine.busy_slots},
        "active_calls": len(bridge.calls),
        "stt": {"name": bridge.recogniser.name, "busy_slots": bridge.recogniser.busy}
        if bridge.recogniser is not None else None,
        "uptime_s": round(time.monotonic() - bridge.started_at, 1),
        "security": "INSECURE: no TWILIO_AUTH_TOKEN, signatures are not checked"
        if settings.insecure else "signatures checked",
        "default_voice": bridge.default_voice,
        "default_preset": settings.default_preset,
        "presets": bridge.presets.names(),
        "phrase_cache": bridge.phrases.stats(),
    }
    servers = bridge.engine.servers()
    if servers:
        body["engine"]["servers"] = servers  # type: ignore[index]
        if not any(s["state"] != "backoff" for s in servers):
            body["status"] = "degraded"
    recogniser = bridge.recogniser
    if recogniser is not None:
        stt_servers = recogniser.servers()
        if stt_servers:
            body["stt"]["servers"] = stt_servers  # type: ignore[index]
            if not any(s["state"] != "backoff" for s in stt_servers):
                body["status"] = "degraded"
    if settings.insecure:
        body["warning"] = "running with --insecure-dev: anyone can open calls on this bridge"
    guard = getattr(request.app.state, "connection_guard", None)
    if guard is not None:
        body["connections"] = guard.stats()
    body["process"] = workers.identity().as_dict()  # which worker answered (--workers)
    body["total"] = (await asyncio.to_thread(bridge.metrics.totals)
                     if bridge.metrics.multiprocess_dir is not None
                     else {"active_calls": len(bridge.calls), "workers": 1})
    if bridge.drain.draining:  # the load balancer stops sending new traffic here
        body["status"] = "draining"
        body["draining_s"] = round(bridge.drain.elapsed_s(), 1)
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)


@router.get("/voices")
async def voices(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    try:
        await _authorized_body(request)  # lists stored voice ids: operators only
    except _BadRequest as exc:
        return exc.response
    return JSONResponse({"voices": bridge.list_voices(), "default": bridge.default_voice})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    return Response(await bridge.metrics.render_async(), media_type=CONTENT_TYPE_LATEST)
