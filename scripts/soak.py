#!/usr/bin/env python
"""Soak: place calls against a production-mode bridge process for N minutes and watch it for leaks.

Starts ``voice-bridge serve --engine synthetic`` on loopback (auth token + PUBLIC_URL, so every
call goes through a signed webhook and a stream token), keeps ``--calls`` calls going at once
(each: greeting, a DTMF key, the demo agent's answer, hang-up), and prints the bridge's RSS and
open fd count from /proc every ``--interval`` seconds, then the growth per call after a warm-up.
Bounded: stops by itself after ``--minutes``; loopback only.

Usage:
  PYTHONPATH=. .venv/bin/python scripts/soak.py --minutes 5 --calls 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

import httpx

from telephony.testing.signed_call import proc_sample, production_bridge, signed_call

GREETING = "Hello, this is a soak test call. Please press a key."


async def one_call(http: httpx.AsyncClient, base_url: str, n: int) -> bool:
    """A whole call; True when both utterances played and the stream stayed valid."""
    call = await signed_call(http, base_url, f"CAsoak{n:08d}", {"greeting": GREETING, "agentUrl": "demo"})
    try:
        if not await call.wait_for(lambda: len(call.played_utterances()) >= 1, timeout=20):
            return False
        await call.send_dtmf(str(n % 10))
        ok = await call.wait_for(lambda: len(call.played_utterances()) >= 2, timeout=20)
        return ok and not call.stats.invalid
    finally:
        await call.hang_up()


async def soak(minutes: float, calls: int, interval: float) -> int:
    async with production_bridge() as bridge, httpx.AsyncClient(timeout=10) as http:
        pid = bridge.process.pid
        deadline = time.monotonic() + minutes * 60
        done = {"ok": 0, "failed": 0}
        counter = iter(range(10**9))

        async def slot() -> None:
            while time.monotonic() < deadline:
                try:
                    ok = await one_call(http, bridge.base_url, next(counter))
                except Exception as exc:  # a failed call is counted, the soak goes on
                    print(f"call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    ok = False
                done["ok" if ok else "failed"] += 1

        started = time.monotonic()
        samples: list[tuple[float, int, float, int]] = []
        print(f"{'t_s':>6} {'calls':>6} {'rss_MB':>8} {'fds':>5}")

        def sample() -> None:
            rss, fds = proc_sample(pid)
            samples.append((time.monotonic() - started, done["ok"] + done["failed"], rss, fds))
            print(f"{samples[-1][0]:6.0f} {samples[-1][1]:6d} {rss:8.1f} {fds:5d}", flush=True)

        sample()
        tasks = [asyncio.create_task(slot()) for _ in range(calls)]
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
                sample()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(1.0)  # let the last calls' sessions close
        sample()
        # growth after warm-up: from the first sample at or after 20 % of the run to the last
        warm = next(s for s in samples if s[0] >= 0.2 * samples[-1][0])
        last = samples[-1]
        calls_after = max(1, last[1] - warm[1])
        print(f"\ncalls: {done['ok']} ok, {done['failed']} failed in {last[0]:.0f} s")
        print(f"RSS {samples[0][2]:.1f} MB at start, {warm[2]:.1f} MB after warm-up (t={warm[0]:.0f} s, "
              f"{warm[1]} calls), {last[2]:.1f} MB at the end: "
              f"{(last[2] - warm[2]) * 1024 / calls_after:+.1f} KB per call over {calls_after} calls")
        print(f"fds {samples[0][3]} at start, {warm[3]} after warm-up, {last[3]} at the end "
              f"({last[3] - warm[3]:+d})")
        log = bridge.log()
        tracebacks = log.count("Traceback")
        print(f"tracebacks in the bridge log: {tracebacks}")
        return 0 if done["failed"] == 0 and tracebacks == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run (default 5)")
    parser.add_argument("--calls", type=int, default=4, help="calls at once (default 4)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between samples")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.calls < 1 or args.minutes > 120:
        parser.error("--minutes must be in (0, 120], --calls >= 1")
    return asyncio.run(soak(args.minutes, args.calls, args.interval))


if __name__ == "__main__":
    sys.exit(main())
