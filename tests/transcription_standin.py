"""A STAND-IN OpenAI-compatible transcription server with the quirks of real ones, switchable per test.

It recognises nothing: it answers a fixed ``text`` (json, verbose_json or plain text), errors in
the three body shapes real servers use, or slowly; and it records each request's form fields, the
decoded WAV header and the headers, so tests can check what the recogniser sent.
"""

from __future__ import annotations

import asyncio
import io
import wave
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.speech_standin import ERROR_BODIES


@dataclass
class TranscriptionStandin:
    text: str = "hello from the stand-in"
    mode: str = "json"
    """json | verbose_json | text | error | garbage"""
    status: int = 500
    error_shape: str = "openai"
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    release: asyncio.Event | None = None
    """When set, every request waits for it before answering (to hold requests in flight)."""

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"])])

    async def wait_requests(self, count: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)

    async def _transcribe(self, request: Request) -> Response:
        form = await request.form()
        upload = form["file"]
        data = await upload.read()  # type: ignore[union-attr]
        with wave.open(io.BytesIO(data), "rb") as wav:
            audio = {"rate": wav.getframerate(), "channels": wav.getnchannels(),
                     "width": wav.getsampwidth(), "frames": wav.getnframes()}
        self.requests.append({"fields": {k: v for k, v in form.items() if k != "file"},
                              "filename": upload.filename, "content_type": upload.content_type,  # type: ignore[union-attr]
                              "audio": audio, "headers": dict(request.headers)})
        self.started.set()
        async with self.arrived:
            self.arrived.notify_all()
        if self.release is not None:
            await self.release.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.mode == "error":
            return JSONResponse(ERROR_BODIES[self.error_shape], status_code=self.status)
        if self.mode == "text":
            return PlainTextResponse(self.text + "\n")
        if self.mode == "verbose_json":
            return JSONResponse({"task": "transcribe", "language": "english", "duration": 1.0,
                                 "text": " " + self.text, "segments": []})
        if self.mode == "garbage":
            return Response(b"<html>proxy error</html>", media_type="text/html")
        return JSONResponse({"text": self.text})
