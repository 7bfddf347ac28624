"""Runs the real bridge (FastAPI under uvicorn) on 127.0.0.1 inside the caller's event loop (tests,
benchmarks): the app in-process, with the test credentials below."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from twilio.request_validator import RequestValidator

from telephony.app import create_app
from telephony.config import Settings
from telephony.conn_guard import plan_budget
from telephony.net import listen_socket
from telephony.server import BridgeServer, build_server
from telephony.services import Bridge
from telephony.testing.asgi_server import serve_asgi
from tts_core.engines import Engine
from tts_core.stt import Recogniser

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
OPERATOR_KEY = "test-operator-key-0123456789"
"""VOICE_BRIDGE_API_KEY of every harness bridge (pass api_key=None for none): operator endpoints
need it (or a Twilio signature)."""
OPERATOR_HEADERS = {"Authorization": f"Bearer {OPERATOR_KEY}"}


@dataclass
class RunningBridge:
    base_url: str
    ws_url: str
    bridge: Bridge
    settings: Settings
    server: BridgeServer

    @property
    def stream_url(self) -> str:
        return self.ws_url + "/media-stream"

    def operator_client(self, **kwargs: object) -> httpx.AsyncClient:
        """A client of this bridge carrying the operator API key."""
        return httpx.AsyncClient(base_url=self.base_url, headers=OPERATOR_HEADERS, **kwargs)  # type: ignore[arg-type]

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
                                 "agent_allow_hosts": "127.0.0.1", "stt": "off",
                                 "api_key": OPERATOR_KEY}
    values.update(overrides)
    # PUBLIC_URL must be known before the port is: bind first, then build settings with it.
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    values.setdefault("public_url", f"http://127.0.0.1:{port}")
    settings = Settings(**{**values, "port": port})
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    app = create_app(settings, engine=engine, recogniser=recogniser)
    budget = plan_budget(fd_limit=fd_limit, raised_from=fd_limit, max_calls=settings.max_calls,
                         max_connections=settings.max_connections, max_pending=settings.max_pending,
                         max_pending_per_peer=settings.max_pending_per_peer)
    server = build_server(app, settings, budget, log_level="warning", handle_signals=False)
    async with serve_asgi(app, sock, server=server, force_exit=False) as base_url:
        yield RunningBridge(base_url, base_url.replace("http://", "ws://"), app.state.bridge, settings,
                            server)
