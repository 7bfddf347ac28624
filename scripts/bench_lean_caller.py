#!/usr/bin/env python
"""Micro-benchmark of the lean load generator's per-message work, without sockets or a bridge.

One ``LeanCaller`` on a transport that discards what it is given: per call-second it builds and
"writes" 50 inbound media messages, scans 50 outbound media messages (one received chunk per frame,
as the corked bridge sends them) and plays 50 playback slots, plus a mark and its echo per second.
Prints the microseconds of CPU (``time.process_time``) per call-second of that Python work: the
part the generator's design controls; the syscalls and the event loop come on top (see
scripts/bench_frame_path.py for whole runs).

Usage: PYTHONPATH=. .venv/bin/python scripts/bench_lean_caller.py [--seconds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time

from telephony.testing.lean_caller import LeanCaller
from telephony.twilio.protocol import OutboundEncoder
from tts_core.audio.telephony_format import SILENCE_FRAME


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


async def bench(seconds: int) -> dict[str, float]:
    caller = LeanCaller(call_sid="CA" + "1" * 32, stream_sid="MZ" + "1" * 32, custom_parameters={})
    caller.socket.transport = _NullTransport()  # type: ignore[assignment]
    caller.socket._upgraded = True
    encoder = OutboundEncoder(caller.stream_sid)
    media = [b"\x81\x7e" + len(m).to_bytes(2, "big") + m
             for m in (encoder.media(bytes([k + 1]) * 160).encode() for k in range(50))]
    mark_text = encoder.mark("u-end").encode()
    mark = bytes((0x81, len(mark_text))) + mark_text  # a server frame: unmasked
    silence = base64.b64encode(SILENCE_FRAME).decode()
    feed = caller.socket.data_received
    now = time.monotonic()
    parts = {"inbound": 0.0, "outbound": 0.0, "playback": 0.0}
    for _ in range(seconds):
        t = time.process_time()
        for _k in range(50):
            caller.send_media(silence)
        t2 = time.process_time()
        for frame in media:
            feed(frame)
        feed(mark)
        t3 = time.process_time()
        for _k in range(50):
            caller.playback.slot(now)
        t4 = time.process_time()
        parts["inbound"] += t2 - t
        parts["outbound"] += t3 - t2
        parts["playback"] += t4 - t3
    assert caller.stats.media_received == 50 * seconds and not caller.stats.invalid, caller.stats.invalid
    assert caller.stats.marks_echoed == seconds
    return {k: round(v / seconds * 1e6, 1) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=200, help="call-seconds to simulate")
    args = parser.parse_args()
    parts = asyncio.run(bench(args.seconds))
    total = sum(parts.values())
    print(f"µs of CPU per call-second: {parts} total {total:.0f} "
          f"(= {total / 1000:.3f} ms; plus syscalls and the event loop)")


if __name__ == "__main__":
    main()
