#!/usr/bin/env python
"""The outbound frame path on its own: CPU per call-second of N calls speaking a cached prompt.

Why a micro-benchmark: the full load test (scripts/bench_frame_path.py) needs a second core for
its load generator and mixes inbound and outbound costs; this one drives only what a call does to
*send*: the ``Speaker`` (render loop from the phrase cache, pacer against the playout clock, marks,
the echo reference hook) through ``StreamSender`` into the lean listener's ``PicowsSocket`` (its
corked writer), on uvloop, with a fake transport whose ``write`` only counts bytes and echoes marks
(as if Twilio played instantly). Each call says the prompt again and again at real pace.

Reported: the process's CPU over the measured window divided by the call-seconds in it (ms of CPU
per call-second), frames sent per call-second (50 at real pace), the bridge's underruns, and
the largest event-loop lag seen (a saturated loop would make underruns of its own).

``--socket plain`` replaces the picows socket by a bare ``async def send_text`` (what the pacer and
sender cost with no socket at all; the ASGI route adds starlette/uvicorn on top of that).

Usage:
  PYTHONPATH=. .venv/bin/python scripts/bench_outbound.py --calls 200 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import re
import time
from types import SimpleNamespace
from typing import Any

import uvloop

from telephony.outbound import SpeakerHooks
from telephony.playout import PlayoutClock
from telephony.speaker import Speaker
from telephony.turns import EchoReference
from telephony.twilio.picows_socket import PicowsSocket
from telephony.twilio.protocol import OutboundEncoder
from telephony.twilio.socket import StreamSender
from tts_core.engines.synthetic import SyntheticEngine
from tts_core.phrase_cache import PhraseCache
from tts_core.presets import load_presets

PROMPT = "For billing, press one. For appointments, press two. To hear this again, press nine."
AT_ONCE = "at_once" in inspect.signature(StreamSender).parameters
"""False when run against an older checkout (the baseline), whose sender has no synchronous path."""
PRESET = load_presets().get("balanced")
MARK_NAME = re.compile(rb'"mark":\{"name":"([^"]+)"')


class Stats:
    def __init__(self) -> None:
        self.frames = 0
        self.underruns = 0
        self.bytes = 0
        self.writes = 0

    def on_frames(self, n: int) -> None:
        self.frames += n

    def on_underrun(self, gap_s: float) -> None:
        self.underruns += 1


class EchoingTransport:
    """Counts what is written; echoes each mark to the speaker (played at once)."""

    def __init__(self, stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        self.stats = stats
        self.loop = loop
        self.speaker: Speaker | None = None

    def write(self, data: bytes) -> None:
        self.stats.bytes += len(data)
        self.stats.writes += 1
        if b'"mark"' in data and self.speaker is not None:
            for name in MARK_NAME.findall(data):
                self.loop.call_soon(self.speaker.on_mark, name.decode())

    def get_extra_info(self, name: str) -> Any:
        return None


def make_send(kind: str, stats: Stats, loop: asyncio.AbstractEventLoop,
              tasks: set[asyncio.Task[None]]) -> tuple[Any, EchoingTransport]:
    transport = EchoingTransport(stats, loop)
    if kind == "plain":
        async def send_text(text: str) -> None:
            transport.write(text.encode())
        return send_text, transport

    async def never(ws: Any) -> None:
        return None

    sock = PicowsSocket(SimpleNamespace(), SimpleNamespace(headers={}), tasks, handler=never)
    sock._transport = SimpleNamespace(underlying_transport=transport)  # type: ignore[assignment]
    return sock, transport


async def one_call(index: int, args: argparse.Namespace, engine: SyntheticEngine, cache: PhraseCache,
                   stats: Stats, tasks: set[asyncio.Task[None]], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    sock, transport = make_send(args.socket, stats, loop, tasks)
    if args.socket == "plain":
        send_text, is_open = sock, (lambda: True)
    else:
        send_text, is_open = sock.send_text, (lambda: sock._open)
    extra: dict[str, Any] = {}
    if AT_ONCE and args.socket == "picows":
        extra["at_once"] = sock  # this checkout: the pacer sends from the shared ticker
    sender = StreamSender(send_text, is_open, stall_s=5.0, on_stall=lambda: None, **extra)
    echo = EchoReference()
    speaker = Speaker(engine=engine, voice_id="synthetic", preset=PRESET,
                      send_text=sender, outbound=OutboundEncoder(f"MZ{index:032d}"),
                      phrase_cache=cache, clock=PlayoutClock(240.0),
                      hooks=SpeakerHooks(on_frames_sent=stats.on_frames, on_underrun=stats.on_underrun,
                                         on_audio_sent=echo.on_sent))
    transport.speaker = speaker
    speaker.start()
    try:
        while not stop.is_set():
            await speaker.say(PROMPT)
    finally:
        await speaker.aclose()


async def lag_probe(stop: asyncio.Event, worst: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t0 = loop.time()
        await asyncio.sleep(0.05)
        worst[0] = max(worst[0], loop.time() - t0 - 0.05)


async def main(args: argparse.Namespace) -> dict[str, float]:
    engine, cache = SyntheticEngine(), PhraseCache()
    stats, tasks, stop = Stats(), set[asyncio.Task[None]](), asyncio.Event()
    warm = Stats()
    await one_call_once(engine, cache, warm, tasks)  # renders the prompt into the cache
    calls = []
    for i in range(args.calls):
        calls.append(asyncio.create_task(one_call(i, args, engine, cache, stats, tasks, stop)))
        await asyncio.sleep(args.ramp_s / args.calls)  # staggered, as real calls arrive
    await asyncio.sleep(1.0)
    worst = [0.0]
    probe = asyncio.create_task(lag_probe(stop, worst))
    frames0, under0, cpu0, wall0 = stats.frames, stats.underruns, time.process_time(), time.monotonic()
    await asyncio.sleep(args.seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    frames, underruns = stats.frames - frames0, stats.underruns - under0
    stop.set()
    for task in calls:
        task.cancel()
    await asyncio.gather(*calls, probe, return_exceptions=True)
    call_s = args.calls * wall
    return {"calls": args.calls, "seconds": round(wall, 2),
            "cpu_ms_per_call_s": round(cpu * 1000 / call_s, 3),
            "frames_per_call_s": round(frames / call_s, 2), "underruns": underruns,
            "writes_per_call_s": round(stats.writes / (args.calls * (wall + args.ramp_s + 1)), 1),
            "max_loop_lag_ms": round(worst[0] * 1000, 1)}


async def one_call_once(engine: SyntheticEngine, cache: PhraseCache, stats: Stats,
                        tasks: set[asyncio.Task[None]]) -> None:
    """Says the prompt once with no pacing, so the calls measured play it from the cache."""
    loop = asyncio.get_running_loop()
    transport = EchoingTransport(stats, loop)

    async def send(text: str) -> None:
        transport.write(text.encode())

    speaker = Speaker(engine=engine, voice_id="synthetic", preset=PRESET,
                      send_text=send, outbound=OutboundEncoder("MZwarm"), phrase_cache=cache,
                      clock=PlayoutClock(lead_ms=1e9))
    transport.speaker = speaker
    speaker.start()
    await speaker.say(PROMPT)
    await speaker.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ramp-s", type=float, default=1.0)
    parser.add_argument("--socket", choices=["picows", "plain"], default="picows")
    parser.add_argument("--profile", help="write a cProfile of the run to this file")
    args = parser.parse_args()
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    print(uvloop.run(main(args)))
    if args.profile:
        prof.disable()
        prof.dump_stats(args.profile)
