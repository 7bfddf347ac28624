"""Errors answered by their class, through real endpoints (the app's handlers, not a helper called
directly): each branch of the tree (tts_core/errors.py) gets its status and code on the bridge's
own routes (``{"error": {"code", "message"}}``) and on /v1 (OpenAI's shape), and an exception that
is not a ``VoiceBridgeError`` (a bug) is answered 500 *and logged with its traceback*.

The app runs in-process (ASGI transport, real lifespan); a scripted engine raises the error under
test from ``/warmup`` and from a speech request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, WebSocket

from telephony.app import create_app
from telephony.config import settings_from_env
from telephony.egress import EgressRefused
from tts_core.engines import EngineError, UnsupportedVoiceError
from tts_core.engines.base import SpeechRequest
from tts_core.engines.synthetic import SyntheticEngine
from tts_core.errors import VoiceBridgeError
from tts_core.fleet import NoServerAvailable
from tts_core.http_body import BodyTooLarge
from tts_core.presets import Preset, UnknownPreset
from tts_core.voices import InvalidVoiceId, Voice, VoiceFetchError, VoiceNotFound


class ScriptedEngine(SyntheticEngine):
    """The synthetic engine, except that warmups and syntheses raise ``fail`` when it is set."""

    fail: BaseException | None = None

    async def warmup(self, voice_id: str, preset: Preset, voice: Voice | None = None
                     ) -> dict[str, float]:
        if self.fail is not None:
            raise self.fail
        return await super().warmup(voice_id, preset, voice)

    async def _stream(self, request: SpeechRequest) -> AsyncIterator[np.ndarray]:
        if self.fail is not None:
            raise self.fail
        async for chunk in super()._stream(request):
            yield chunk


@asynccontextmanager
async def bridge_app(engine: ScriptedEngine) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app (routes, handlers, lifespan) in-process; open operator and /v1 routes."""
    settings = settings_from_env({}, insecure_dev=True, stt="off", engine="synthetic")
    app = create_app(settings, engine=engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://bridge") as client:
        yield app, client


# (error raised by the engine, status, code): one per branch, plus subclasses with their own code
BRANCHES = [
    (InvalidVoiceId("bad id"), 422, "invalid_voice"),  # InvalidInput > Unprocessable
    (UnsupportedVoiceError("no such built-in voice"), 422, "unsupported_voice"),  # Unprocessable
    (UnknownPreset("no preset 'loud'"), 422, "unknown_preset"),  # Unprocessable
    (BodyTooLarge(1024, 4096), 413, "body_too_large"),  # TooLarge
    (VoiceNotFound("voice 'nobody' not found"), 404, "voice_not_found"),  # NotFound
    (EgressRefused("10.0.0.1 is private"), 403, "egress_refused"),  # Forbidden
    (NoServerAvailable("every server backs off"), 503, "no_server_available"),  # Overloaded
    (EngineError("the model crashed"), 502, "engine_error"),  # UpstreamFailed
    (VoiceFetchError("voice server timed out"), 502, "voice_fetch_failed"),  # UpstreamFailed
    (VoiceBridgeError("deliberate, unclassified"), 500, "internal_error"),  # the base
]


@pytest.mark.parametrize(("error", "status", "code"), BRANCHES,
                         ids=[type(e).__name__ for e, _, _ in BRANCHES])
async def test_each_branch_answers_its_status_and_code_on_the_bridges_routes(
        error: VoiceBridgeError, status: int, code: str) -> None:
    engine = ScriptedEngine()
    async with bridge_app(engine) as (_, client):
        engine.fail = error
        response = await client.post("/warmup", json={})
    assert response.status_code == status, response.text
    assert response.json() == {"error": {"code": code, "message": error.message}}


async def test_a_refusal_keeps_the_public_message_not_the_log_text() -> None:
    """EgressRefused's str() names the address (for the log); clients get only its message."""
    engine = ScriptedEngine()
    async with bridge_app(engine) as (_, client):
        engine.fail = EgressRefused("agent.internal resolves to 10.0.0.7 (private)")
        response = await client.post("/warmup", json={})
    assert response.status_code == 403
    assert "10.0.0.7" not in response.text and response.json()["error"]["message"] == \
        EgressRefused.PUBLIC_MESSAGE


async def test_route_refusals_and_domain_errors_keep_their_codes() -> None:
    """Refusals the routes raise (unknown preset, bad JSON, invalid fields) by class, too."""
    async with bridge_app(ScriptedEngine()) as (_, client):
        unknown = await client.post("/warmup", json={"preset": "loud"})
        not_json = await client.post("/warmup", content=b"{nope")
        invalid = await client.post("/warmup", json={"voice": 3, "extra": 1})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (422, "unknown_preset")
    assert (not_json.status_code, not_json.json()["error"]["code"]) == (400, "invalid_json")
    assert (invalid.status_code, invalid.json()["error"]["code"]) == (422, "invalid_request")
    fields = {d["field"] for d in invalid.json()["error"]["details"]}
    assert fields == {"voice", "extra"}


async def test_a_bug_is_a_logged_500_not_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    engine = ScriptedEngine()
    async with bridge_app(engine) as (_, client):
        engine.fail = ZeroDivisionError("a bug in the engine")
        with caplog.at_level(logging.ERROR):
            response = await client.post("/warmup", json={})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "a bug in the engine" not in response.text  # the bug's text stays in the log
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert logged, "the bug's traceback must be logged"


# ---- /v1: OpenAI's shape, status and type from the same classes --------------------------------
OPENAI_BRANCHES = [
    (UnsupportedVoiceError("no such built-in voice"), 400, "invalid_request_error", "unsupported_voice"),
    (EngineError("the model crashed"), 502, "server_error", "engine_error"),
]


@pytest.mark.parametrize(("error", "status", "type_", "code"), OPENAI_BRANCHES,
                         ids=[type(e).__name__ for e, *_ in OPENAI_BRANCHES])
async def test_v1_answers_engine_errors_by_class_in_openais_shape(
        error: VoiceBridgeError, status: int, type_: str, code: str) -> None:
    engine = ScriptedEngine()
    async with bridge_app(engine) as (_, client):
        engine.fail = error
        response = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi."})
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert (body["type"], body["code"]) == (type_, code)
    assert set(body) == {"message", "type", "param", "code"}


V1_RESOLVE_ERRORS = [
    (NoServerAvailable("every server backs off"), 503, "server_error", "no_server_available"),
    (EgressRefused("10.0.0.1 is private"), 403, "permission_error", "egress_refused"),
    (BodyTooLarge(1024), 413, "invalid_request_error", "body_too_large"),
    (UnknownPreset("no preset"), 400, "invalid_request_error", "unknown_preset"),  # 422 -> 400
]


@pytest.mark.parametrize(("error", "status", "type_", "code"), V1_RESOLVE_ERRORS,
                         ids=[type(e).__name__ for e, *_ in V1_RESOLVE_ERRORS])
async def test_v1_answers_any_branch_by_class(error: VoiceBridgeError, status: int, type_: str,
                                              code: str) -> None:
    engine = ScriptedEngine()
    async with bridge_app(engine) as (app, client):
        async def resolve(_: str | None) -> tuple[str, None]:
            raise error

        app.state.bridge.resolve_voice = resolve
        response = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi."})
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert (body["type"], body["code"], body["message"]) == (type_, code, error.message)


async def test_v1_bug_is_a_logged_500_in_openais_shape(caplog: pytest.LogCaptureFixture) -> None:
    engine = ScriptedEngine()
    async with bridge_app(engine) as (app, client):
        async def resolve(_: str | None) -> tuple[str, None]:
            raise KeyError("a bug")

        app.state.bridge.resolve_voice = resolve
        with caplog.at_level(logging.ERROR):
            response = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi."})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


# ---- WebSockets: the class's close code -------------------------------------------------------
def test_a_websocket_route_closes_with_the_errors_close_code() -> None:
    """An error of the tree escaping a WebSocket route closes the socket with its class's code
    (NotFound: 1008, Overloaded: 1013)."""
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    settings = settings_from_env({}, insecure_dev=True, stt="off", engine="synthetic")
    app = create_app(settings, engine=ScriptedEngine())
    errors: dict[str, BaseException] = {"not-found": VoiceNotFound("no voice 'x'"),
                                        "busy": NoServerAvailable("every server backs off")}

    async def failing(websocket: WebSocket, name: str) -> None:
        await websocket.accept()
        raise errors[name]

    app.add_api_websocket_route("/test-ws/{name}", failing)
    with TestClient(app) as client:
        for name, code in (("not-found", 1008), ("busy", 1013)):
            with client.websocket_connect(f"/test-ws/{name}") as ws, \
                    pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == code, name


def _error_classes_off_the_tree() -> list[str]:
    """Every exception class defined in the product's modules (test tooling aside) that does not derive
    from the one tree."""
    import importlib
    import inspect
    import pkgutil

    off = []
    for package in ("tts_core", "telephony"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            if ".testing" in info.name or info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                        and not issubclass(obj, VoiceBridgeError)):
                    off.append(f"{info.name}.{name}")
    return off


def test_every_exception_class_of_the_product_is_on_the_error_tree() -> None:
    assert _error_classes_off_the_tree() == []
