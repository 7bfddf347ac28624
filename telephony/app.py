"""The FastAPI application: routes plus a lifespan that owns the shared ``Bridge``."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketState

from telephony import control_api, media_stream, speech_api, transcription_api, webhook
from telephony.config import ConfigError, Settings
from telephony.errors import error_response, json_error
from telephony.services import Bridge
from tts_core.engines import Engine
from tts_core.errors import VoiceBridgeError
from tts_core.stt import Recogniser

log = logging.getLogger("voice_bridge")


GC_GEN1_THRESHOLD = 20
GC_GEN2_THRESHOLD = 100
"""Older generations' thresholds while ``tuned_gc`` holds (Python's defaults are 10 and 10)."""


@contextmanager
def tuned_gc(gen0_threshold: int) -> Iterator[None]:
    """While the bridge serves: the start-up heap frozen and young collections ``gen0_threshold``
    allocations apart (see ``gc_gen0_threshold`` in telephony/settings/limits.py for why); on exit
    the collector is as it was (tests start many apps in one process). 0: nothing changes."""
    if gen0_threshold == 0:
        yield
        return
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(gen0_threshold, GC_GEN1_THRESHOLD, GC_GEN2_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def create_app(settings: Settings, *, engine: Engine | None = None,
               recogniser: Recogniser | None = None) -> FastAPI:
    """Build the app. ``engine`` overrides the configured one (tests inject a synthetic engine);
    ``recogniser`` likewise (tests share one loaded model; the app does not close it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            bridge = await Bridge.start(settings, engine=engine, recogniser=recogniser)
        except ConfigError as exc:
            log.error("voice-bridge cannot start: %s", exc)
            raise
        app.state.bridge = bridge
        if settings.insecure:
            log.warning("=" * 72)
            log.warning("INSECURE DEVELOPMENT MODE: no TWILIO_AUTH_TOKEN, webhook and stream "
                        "signatures are NOT checked. Never expose this server to the internet.")
            log.warning("=" * 72)
        log.info("voice-bridge ready: engine=%s voice=%s preset=%s", bridge.engine.name,
                 bridge.default_voice, settings.default_preset)
        log.info(speech_api.access_summary(settings))
        fast_stream = None
        if settings.stream_port is not None:
            from telephony.twilio.picows_socket import FastStreamServer

            fast_stream = FastStreamServer(app, media_stream.handle_stream)
            await fast_stream.start(settings.host, settings.stream_port)
        try:
            with tuned_gc(settings.gc_gen0_threshold):  # after start-up: engine, voices, listeners
                yield
        finally:
            if fast_stream is not None:
                await fast_stream.aclose()
            await bridge.aclose()

    app = FastAPI(title="voice-bridge", lifespan=lifespan)
    app.include_router(webhook.router)
    app.include_router(control_api.router)
    app.include_router(media_stream.router)
    app.include_router(transcription_api.router)  # /v1 too: before speech_api's /v1 catch-all
    app.include_router(speech_api.router)  # /v1: OpenAI-shaped errors of its own

    @app.exception_handler(VoiceBridgeError)
    async def deliberate_error(conn: HTTPConnection, exc: VoiceBridgeError):  # type: ignore[no-untyped-def]
        """Every error of the tree, answered by its class (telephony/errors.py); /v1 answers its own.
        On a WebSocket the class's close code ends the socket (before ``accept``: refused)."""
        if isinstance(conn, WebSocket):
            log.info("%s: closing %d: %s: %s", conn.url.path, exc.ws_close_code, type(exc).__name__, exc)
            if conn.application_state is not WebSocketState.DISCONNECTED:
                await conn.close(code=exc.ws_close_code)
            return None
        if exc.http_status >= 500:
            log.warning("%s %s: %s: %s", conn.scope["method"], conn.url.path, type(exc).__name__, exc)
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):  # type: ignore[no-untyped-def]
        return json_error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):  # type: ignore[no-untyped-def]
        return json_error(422, "invalid_request", "request is invalid", details=exc.errors())

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception):  # type: ignore[no-untyped-def]
        """A bug: logged with its traceback (Starlette then re-raises it to the server), never hidden."""
        log.error("unhandled error", exc_info=exc)
        return json_error(500, "internal_error", "internal server error")

    return app
