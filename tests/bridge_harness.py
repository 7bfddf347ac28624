"""Runs the real bridge (FastAPI under uvicorn) on 127.0.0.1 inside the test's event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from twilio.request_validator import RequestValidator

from telephony.app import create_app
from telephony.config import Settings
from telephony.net import listen_socket
from telephony.services import Bridge
from tests.asgi_server import serve_asgi
from tts_core.engines import Engine
from tts_core.stt import Recogniser

AUTH_TOKEN = "test-auth-token-0123456789abcdef"


@dataclass
class RunningBridge:
    base_url: str
    ws_url: str
    bridge: Bridge
    settings: Settings

    @property
    def stream_url(self) -> str:
        return self.ws_url + "/media-stream"

    def sign(self, url: str, params: dict[str, str] | None = None) -> str:
        return RequestValidator(AUTH_TOKEN).compute_signature(url, params or {})

    async def webhook(self, client: httpx.AsyncClient, call_sid: str, query: str = "",
                      signed: bool = True, **form: str) -> httpx.Response:
        """POST /twiml as Twilio would, signed over PUBLIC_URL + path + query."""
        params = {"CallSid": call_sid, "AccountSid": "AC1", "From": "+15550001111",
                  "To": "+15550002222", "Direction": "inbound", **form}
        url = f"{self.base_url}/twiml{query}"
        headers = {"X-Twilio-Signature": self.sign(url, params) if signed else "bad"}
        return await client.post(url, data=params, headers=headers)


@contextlib.asynccontextmanager
async def running_bridge(engine: Engine | None = None, *, recogniser: Recogniser | None = None,
                         **overrides: object) -> AsyncIterator[RunningBridge]:
    """The bridge on loopback. Speech recognition is off unless a test passes ``stt="local"``
    (with the session's shared ``recogniser`` fixture, so the model loads once per run)."""
    values: dict[str, object] = {"twilio_auth_token": AUTH_TOKEN, "engine": "synthetic",
                                 "port": 0, "start_timeout_s": 2.0,
                                 # agents and play servers of the tests listen on loopback
                                 "agent_allow_hosts": "127.0.0.1", "stt": "off"}
    values.update(overrides)
    # PUBLIC_URL must be known before the port is: bind first, then build settings with it.
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    values.setdefault("public_url", f"http://127.0.0.1:{port}")
    settings = Settings(**{**values, "port": port})
    app = create_app(settings, engine=engine, recogniser=recogniser)
    async with serve_asgi(app, sock, force_exit=False, ws="websockets-sansio",
                          ws_per_message_deflate=False, lifespan="on") as base_url:
        yield RunningBridge(base_url, base_url.replace("http://", "ws://"), app.state.bridge, settings)
