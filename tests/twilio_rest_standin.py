"""A STAND-IN for Twilio's REST API (no test may reach api.twilio.com): the one endpoint a hang-up
uses, ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``, on 127.0.0.1.

It records every request (path, form body, Basic-auth user and password, arrival time), answers
from a script of replies (status, Twilio error code, delay before answering), and runs a test's
hook at each request's arrival so a test can look at the rest of the world at that moment (was
the goodbye's end mark echoed yet? is the media stream still open?). Error bodies have Twilio's
shape: ``{"code", "message", "more_info", "status"}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from telephony.testing.asgi_server import serve_asgi

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "rest-test-auth-token"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    code: int | None = None
    """Twilio's error code in the body (error replies)."""
    delay_s: float = 0.0
    """Wait this long before answering (a slow or hung API)."""


OK = Reply()
ALREADY_ENDED = Reply(404, 20404)
SERVER_ERROR = Reply(500, 20500)


@dataclass
class RestRequest:
    account_sid: str
    call_sid: str
    form: dict[str, str]
    username: str
    password: str
    received_at: float = field(default_factory=time.monotonic)


class TwilioRestStandIn:
    def __init__(self) -> None:
        self.url = ""
        self.requests: list[RestRequest] = []
        self.script: deque[Reply] = deque()
        self.default = OK
        """The reply once the script is used up."""
        self.on_request: Callable[[RestRequest], None] | None = None
        self._arrived = asyncio.Event()
        self.app = Starlette(routes=[
            Route("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json", self._update,
                  methods=["POST"]),
        ])

    def reply(self, *replies: Reply, default: Reply | None = None) -> None:
        self.script.extend(replies)
        if default is not None:
            self.default = default

    async def wait_requests(self, count: int, timeout: float = 10.0) -> bool:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return True

    async def _update(self, request: Request) -> JSONResponse:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        username, password = "", ""
        if scheme == "Basic":
            username, _, password = base64.b64decode(credentials).decode().partition(":")
        form = {k: str(v) for k, v in (await request.form()).items()}
        recorded = RestRequest(request.path_params["account_sid"], request.path_params["call_sid"],
                               form, username, password)
        self.requests.append(recorded)
        if self.on_request is not None:
            self.on_request(recorded)
        self._arrived.set()
        reply = self.script.popleft() if self.script else self.default
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status >= 400:
            return JSONResponse({"code": reply.code, "message": f"stand-in error {reply.code}",
                                 "more_info": f"https://www.twilio.com/docs/errors/{reply.code}",
                                 "status": reply.status}, status_code=reply.status)
        return JSONResponse(_call(recorded), status_code=reply.status)


def _call(request: RestRequest) -> dict[str, Any]:
    """A call resource as Twilio answers an update (the fields a client reads)."""
    return {"sid": request.call_sid, "account_sid": request.account_sid, "status": "completed",
            "direction": "inbound", "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{request.account_sid}/Calls/{request.call_sid}.json"}


@contextlib.asynccontextmanager
async def twilio_rest_standin() -> AsyncIterator[TwilioRestStandIn]:
    standin = TwilioRestStandIn()
    async with serve_asgi(standin.app) as url:
        standin.url = url
        yield standin
