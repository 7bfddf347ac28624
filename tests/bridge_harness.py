"""Runs the real bridge (FastAPI under uvicorn) on 127.0.0.1 inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import uvicorn
from twilio.request_validator import RequestValidator

from telephony.app import create_app
from telephony.config import Settings
from telephony.net import listen_socket
from telephony.services import Bridge
from tts_core.engines import Engine

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
async def running_bridge(engine: Engine | None = None, **overrides: object) -> AsyncIterator[RunningBridge]:
    values: dict[str, object] = {"twilio_auth_token": AUTH_TOKEN, "engine": "synthetic",
                                 "port": 0, "start_timeout_s": 2.0,
                                 # agents and play servers of the tests listen on loopback
                                 "agent_allow_hosts": "127.0.0.1"}
    values.update(overrides)
    # PUBLIC_URL must be known before the port is: bind first, then build settings with it.
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    values.setdefault("public_url", f"http://127.0.0.1:{port}")
    settings = Settings(**{**values, "port": port})
    app = create_app(settings, engine=engine)
    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio",
                            ws_per_message_deflate=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        assert server.started, "bridge did not start"
        yield RunningBridge(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}",
                            app.state.bridge, settings)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()
