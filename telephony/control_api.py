"""Operator endpoints: ``/warmup``, ``/preload``, ``/health``, ``/voices``, ``/metrics``.

Routes raise errors of the tree (tts_core/errors.py, telephony/errors.py) and never build error
bodies: the app's handler answers each by its class.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from telephony import workers
from telephony.access import operator_body
from telephony.errors import BadRequest, UnprocessableRequest
from telephony.services import Bridge
from telephony.untrusted import has_lone_surrogate
from telephony.webhook import public_request_url
from tts_core.errors import Forbidden, Unauthorized

router = APIRouter()
M = TypeVar("M", bound=BaseModel)
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
        raise BadRequest("request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int over 4,300 digits
        raise BadRequest(f"request body is not JSON: {str(exc)[:200]}", code="invalid_json") from None
    if has_lone_surrogate(data):  # would fail every re-encoding of it, far from here
        raise BadRequest("request body holds a lone UTF-16 surrogate (not valid Unicode)",
                         code="invalid_json")
    return data


async def _authorized_body(request: Request) -> bytes:
    """The capped body of an authorized operator request (see telephony/access.py); raises the
    401/403/408/413 refusal before any work."""
    bridge: Bridge = request.app.state.bridge
    settings = bridge.settings
    try:
        return await operator_body(
            request, auth_token=settings.twilio_auth_token, api_key=settings.api_key,
            insecure_dev=settings.insecure_dev, public_url=public_request_url(bridge, request),
            body_timeout_s=settings.body_timeout_s)
    except (Unauthorized, Forbidden):
        bridge.metrics.error("operator_unauthorized")
        raise


def _model(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or a 422 naming each field that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                    for e in exc.errors()]
        raise UnprocessableRequest("request body is invalid", code="invalid_request",
                                   details=problems) from None


@router.post("/warmup")
async def warmup(request: Request) -> Response:
    """Errors leave through the app's handler for the error tree (telephony/app.py): unknown
    preset 422, invalid voice id 422, unknown voice 404, voice fetch 502, unsupported voice 422,
    engine failure 502, each with its class's code."""
    bridge: Bridge = request.app.state.bridge
    body = _model(WarmupRequest, await _json_body(request))
    preset = bridge.presets.get(body.preset or bridge.settings.default_preset)
    voice_id, warmup_ms, targets = await bridge.warmup(body.voice, preset)
    return JSONResponse({"voice": voice_id, "preset": preset.name, "warmup_ms": round(warmup_ms, 2),
                         "targets": targets, "ready": True})


@router.post("/preload")
async def preload(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    data = await _json_body(request)
    body = _model(PreloadRequest, {"voices": data} if isinstance(data, list) else data)
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
    await _authorized_body(request)  # lists stored voice ids: operators only
    return JSONResponse({"voices": bridge.list_voices(), "default": bridge.default_voice})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    return Response(await bridge.metrics.render_async(), media_type=CONTENT_TYPE_LATEST)
