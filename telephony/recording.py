"""Recording real calls as recorded-call JSONL (docs/recorded-calls.md), opt-in.

A recording holds the caller's audio: enable it only where you are allowed to record calls.
Lines are queued and written by a background task, so a slow disk never blocks a call; if the
queue fills, lines are dropped and the drop is counted in the file's trailer.

Runs of digitally silent inbound frames (160 bytes of 0xFF) are stored as one
``{"t", "from": "twilio", "silence_ms": N}`` line, which replayers expand back into N/20 frames
20 ms apart: lossless, and minutes of a listening caller cost one line. Agent lines that fall inside
such a run are written after it, so the file stays in time order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

from telephony.twilio_media import Start

FORMAT_VERSION = 1
QUEUE_LINES = 10_000
FRAME_S = 0.020
SILENT_PAYLOAD = base64.b64encode(b"\xff" * 160).decode()
"""Base64 of one 20 ms frame of μ-law digital silence, as Twilio sends it."""
RUN_SLACK_S = 0.1
"""A silent frame this far off the run's 20 ms grid (a stall in delivery) starts a new run."""
MAX_DEFERRED = 500
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class CallRecorder:
    def __init__(self, path: Path, start: Start) -> None:
        self.path = path
        self.started = time.monotonic()
        self.dropped = 0
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_LINES)
        self._run_t = 0.0
        self._run_frames = 0
        self._deferred: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._writer(), name=f"recorder:{start.call_sid}")
        self._line({"type": "header", "format": "voice-bridge-recorded-call", "version": FORMAT_VERSION,
                    "source": "bridge", "sample_rate": 8000, "encoding": "audio/x-mulaw",
                    "call_sid": start.call_sid, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                             time.gmtime())})

    @classmethod
    def open(cls, directory: Path, start: Start) -> CallRecorder:
        directory.mkdir(parents=True, exist_ok=True)
        name = _SAFE.sub("_", start.call_sid)[:64] or "call"
        return cls(directory / f"{name}-{int(time.time())}.jsonl", start)

    def _offset(self) -> float:
        return round(time.monotonic() - self.started, 4)

    def _line(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(json.dumps(record, separators=(",", ":")))
        except asyncio.QueueFull:
            self.dropped += 1

    def twilio_message(self, raw: str | bytes) -> None:
        """Record a message Twilio sent, verbatim (only valid JSON objects)."""
        if isinstance(raw, bytes):
            return
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or an int over 4,300 digits: not recorded
            return
        if isinstance(message, dict) and message.get("event") in {"connected", "start", "media", "dtmf",
                                                                   "stop", "mark"}:
            if message["event"] == "mark":
                return  # marks are echoes of ours; the replay regenerates them
            t = self._offset()
            media = message.get("media")
            if (message["event"] == "media" and isinstance(media, dict)
                    and media.get("payload") == SILENT_PAYLOAD):
                self._silent_frame(t)
                return
            self._flush_silence()
            self._line({"t": t, "from": "twilio", "msg": message})

    def _silent_frame(self, t: float) -> None:
        if self._run_frames and abs(t - (self._run_t + self._run_frames * FRAME_S)) > RUN_SLACK_S:
            self._flush_silence()
        if not self._run_frames:
            self._run_t = t
        self._run_frames += 1

    def _flush_silence(self) -> None:
        if self._run_frames:
            self._line({"t": self._run_t, "from": "twilio", "silence_ms": self._run_frames * 20})
            self._run_frames = 0
        for record in self._deferred:
            self._line(record)
        self._deferred.clear()

    def agent_message(self, message: dict[str, Any]) -> None:
        record = {"t": self._offset(), "from": "agent", "msg": message}
        if self._run_frames:
            self._deferred.append(record)
            if len(self._deferred) >= MAX_DEFERRED:
                self._flush_silence()
            return
        self._line(record)

    async def aclose(self) -> None:
        self._flush_silence()
        self._line({"type": "trailer", "dropped_lines": self.dropped})
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(self._task, 10)
        except TimeoutError:
            self._task.cancel()

    async def _writer(self) -> None:
        with self.path.open("w", encoding="utf-8") as handle:
            while True:
                line = await self._queue.get()
                if line is None:
                    return
                batch = [line]
                while not self._queue.empty() and len(batch) < 500:
                    nxt = self._queue.get_nowait()
                    if nxt is None:
                        await asyncio.to_thread(handle.write, "\n".join(batch) + "\n")
                        return
                    batch.append(nxt)
                await asyncio.to_thread(handle.write, "\n".join(batch) + "\n")
