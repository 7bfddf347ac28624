"""Recording real calls as recorded-call JSONL (docs/recorded-calls.md), opt-in.

A recording holds the caller's audio: enable it only where you are allowed to record calls.
Lines are queued and written by a background task, so a slow disk never blocks a call; if the
queue fills, lines are dropped and the drop is counted in the file's trailer.

The lines are formatted by telephony/recorded_call.py, the format's one reader and writer (shared
with the replay tools in telephony/testing): runs of digitally silent inbound frames (160 bytes of
0xFF) become
one ``{"t", "from": "twilio", "silence_ms": N}`` line, which replayers expand back into N/20 frames
20 ms apart: lossless, and minutes of a listening caller cost one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from telephony.recorded_call import RecordingWriter
from telephony.twilio.protocol import Start

QUEUE_LINES = 10_000
RUN_SLACK_S = 0.1
"""A silent frame this far off the run's 20 ms grid (a stall in delivery) starts a new run."""
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_RECORDED_EVENTS = {"connected", "start", "media", "dtmf", "stop"}
"""What Twilio sends that a replay needs; marks are echoes of ours, and the replay regenerates them."""


class CallRecorder:
    """One call's recording: lines formatted by the shared ``RecordingWriter``, queued here and
    written to disk by a background task."""

    def __init__(self, path: Path, start: Start, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        """Where offsets are read (tests inject a scripted one to place frames on a known grid)."""
        self.started = clock()
        self.dropped = 0
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_LINES)
        self._task = asyncio.create_task(self._writer(), name=f"recorder:{start.call_sid}")
        self._format = RecordingWriter(self, source="bridge", run_slack_s=RUN_SLACK_S,
                                       call_sid=start.call_sid,
                                       recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @classmethod
    def open(cls, directory: Path, start: Start, *,
             clock: Callable[[], float] = time.monotonic) -> CallRecorder:
        directory.mkdir(parents=True, exist_ok=True)
        name = _SAFE.sub("_", start.call_sid)[:64] or "call"
        return cls(directory / f"{name}-{int(time.time())}.jsonl", start, clock=clock)

    def _offset(self) -> float:
        return round(self._clock() - self.started, 4)

    def write(self, line: str) -> None:
        """Queue one formatted line (the writer's sink); never blocks: a full queue drops it."""
        try:
            self._queue.put_nowait(line)
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
        if isinstance(message, dict) and message.get("event") in _RECORDED_EVENTS:
            self._format.twilio(self._offset(), message)

    def agent_message(self, message: dict[str, Any]) -> None:
        self._format.agent(self._offset(), message)

    async def aclose(self) -> None:
        self._format.close(dropped_lines=self.dropped)
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
                        await asyncio.to_thread(handle.write, "".join(batch))
                        return
                    batch.append(nxt)
                await asyncio.to_thread(handle.write, "".join(batch))
