#!/usr/bin/env python
"""A live call's time to first audio and underruns on a quiet bridge and under attack, side by side.

For each scenario a fresh production-mode bridge process starts (auth token + PUBLIC_URL + operator
key, synthetic engine, loopback), the attack starts and settles, then ``--calls`` live calls run one
after another: a signed webhook with its own greeting, the stream with its token (Twilio emulated at
real time), then a key press that the demo agent answers. Measured per call: greeting TTFA (webhook
sent -> first media frame), agent-turn TTFA (key sent -> first frame of the answer), underruns.

Scenarios: quiet; ``idle`` = 1,000 idle TCP connections (half send a partial request header a line a
second: slowloris), re-opened when the bridge drops them; ``warmup`` = 32 clients POSTing /warmup
without credentials in a loop; ``burst`` = 100 signed webhooks with distinct greetings and no streams,
fired together just before each live call; ``all`` = the three at once. Attackers connect from
40 loopback addresses (127.0.1.x, so the per-peer cap is not all that
stops them), the burst from 10 (127.0.2.x, Twilio's).
Loopback only; bounded; every connection is closed at the end of its scenario.

Usage:
  PYTHONPATH=. .venv/bin/python scripts/bench_attack.py --calls 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from telephony.testing.signed_call import production_bridge, raise_fd_limit, signed_webhook, stream_of
from telephony.testing.twilio_emulator import TwilioEmulator


def attacker(i: int, peers: int = 40) -> str:
    """Attackers come from ``peers`` loopback addresses (127.0.1.x), as a botnet would."""
    return f"127.0.1.{1 + i % peers}"


def twilio_address(i: int) -> str:
    """Twilio's webhooks come from many addresses too (127.0.2.x)."""
    return f"127.0.2.{1 + i % 10}"
SCENARIOS = ["quiet", "idle", "idle-one-peer", "warmup", "burst", "all"]


@dataclass
class CallFigures:
    greeting_ttfa_ms: float
    turn_ttfa_ms: float
    underruns: int
    underrun_ms: float
    ok: bool
    error: str = ""
    webhook_ms: float = float("nan")


@dataclass
class Attack:
    counts: Counter[str] = field(default_factory=Counter)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    held: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()


async def idle_connection(attack: Attack, port: int, i: int, peers: int, stop_at: float) -> None:
    """One idle connection (or a slowloris header), re-opened whenever the bridge drops it."""
    slowloris = i % 2 == 0
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(attacker(i, peers), 0))
        except OSError:
            attack.counts["connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        attack.writers.add(writer)
        attack.counts["opened"] += 1
        attack.held += 1
        try:
            if slowloris:
                writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            while time.monotonic() < stop_at:
                if slowloris:
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                        attack.counts["dropped_by_bridge"] += 1
                        break
        except (OSError, ConnectionError):
            attack.counts["dropped_by_bridge"] += 1
        finally:
            attack.held -= 1
            attack.writers.discard(writer)
            writer.close()
        await asyncio.sleep(1.0)


async def warmup_flood(attack: Attack, base_url: str, i: int, stop_at: float) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=attacker(i))
    async with httpx.AsyncClient(transport=transport, timeout=10) as http:
        while time.monotonic() < stop_at:
            try:
                response = await http.post(base_url + "/warmup", json={"voice": "synthetic"})
                attack.counts[f"warmup_{response.status_code}"] += 1
            except httpx.HTTPError:
                attack.counts["warmup_error"] += 1


async def greeting_burst(attack: Attack, base_url: str, round_: int, size: int = 100) -> None:
    """``size`` signed webhooks with distinct greetings, all at once; their streams never come."""
    async def one(n: int) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=twilio_address(n))
        async with httpx.AsyncClient(transport=transport, timeout=30) as http:
            greeting = (f"Welcome, caller {round_} {n}. Your call matters to us, and an agent will be "
                        f"with you shortly. Reference {n * 7919 % 10007}.")
            try:
                response = await signed_webhook(http, base_url, f"CAburst{round_:03d}{n:05d}",
                                                {"greeting": greeting, "agentUrl": "demo"})
                attack.counts[f"burst_{response.status_code}"] += 1
            except httpx.HTTPError:
                attack.counts["burst_error"] += 1

    await asyncio.gather(*(one(n) for n in range(size)))


async def live_call(base_url: str, n: int) -> CallFigures:
    async with httpx.AsyncClient(timeout=30) as http:
        sent = time.monotonic()
        query = {"greeting": f"Thanks for calling, caller number {n}. How can I help?", "agentUrl": "demo"}
        try:
            response = await signed_webhook(http, base_url, f"CAlive{n:06d}", query)
            webhook_ms = (time.monotonic() - sent) * 1000
            response.raise_for_status()
            url, params = stream_of(response.text)
            call = TwilioEmulator(url, call_sid=f"CAlive{n:06d}", stream_sid=f"MZlive{n:06d}",
                                  custom_parameters=params, keep_audio=False)
            await call.connect()
        except (httpx.HTTPError, OSError) as exc:  # the webhook (or the stream) was refused
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
            return CallFigures(float("nan"), float("nan"), 0, 0.0, False,
                               f"webhook {status}" if status else type(exc).__name__)
        try:
            ok = await call.wait_for(lambda: len(call.played_utterances()) >= 1, timeout=30)
            greeting_ttfa = (call.stats.utterances[0].first_frame_received - sent) * 1000 \
                if call.stats.utterances else float("nan")
            pressed = time.monotonic()
            await call.send_dtmf(str(n % 10))
            ok = ok and await call.wait_for(lambda: len(call.played_utterances()) >= 2, timeout=30)
            turn_ttfa = (call.stats.utterances[1].first_frame_received - pressed) * 1000 \
                if len(call.stats.utterances) > 1 else float("nan")
            return CallFigures(greeting_ttfa, turn_ttfa, call.stats.underruns, call.stats.underrun_ms,
                               ok and not call.stats.invalid, webhook_ms=webhook_ms)
        finally:
            await call.hang_up()


async def scenario(name: str, calls: int, settle_s: float) -> tuple[list[CallFigures], Attack, float]:
    async with production_bridge() as bridge:
        attack = Attack()
        stop_at = time.monotonic() + 600
        if name in ("idle", "idle-one-peer", "all"):
            peers = 1 if name == "idle-one-peer" else 40
            attack.tasks += [asyncio.create_task(idle_connection(attack, bridge.port, i, peers, stop_at))
                             for i in range(1000)]
        if name in ("warmup", "all"):
            attack.tasks += [asyncio.create_task(warmup_flood(attack, bridge.base_url, i, stop_at))
                             for i in range(32)]
        if attack.tasks:
            await asyncio.sleep(settle_s)  # let the attack build up before the live call
        figures = []
        health_ms = []
        try:
            for n in range(calls):
                if name in ("burst", "all"):
                    burst = asyncio.create_task(greeting_burst(attack, bridge.base_url, n))
                    attack.tasks.append(burst)
                    await asyncio.sleep(0.3)  # the webhooks are in; their pre-renders are running
                async with httpx.AsyncClient(timeout=10) as http:
                    t0 = time.monotonic()
                    try:
                        health = await http.get(bridge.base_url + "/health")
                        health_ms.append((time.monotonic() - t0) * 1000)
                        attack.counts[f"health_{health.status_code}"] += 1
                    except httpx.HTTPError:
                        attack.counts["health_failed"] += 1
                try:
                    async with asyncio.timeout(90):
                        figures.append(await live_call(bridge.base_url, n))
                except TimeoutError:
                    figures.append(CallFigures(float("nan"), float("nan"), 0, 0.0, False, "timeout"))
                print(f"  {name} call {n}: {figures[-1]}", flush=True)
            attack.counts["held_at_end"] = attack.held
        finally:
            await attack.stop()
        return figures, attack, _median(health_ms)


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # NaN: the call did not happen
    return statistics.median(values) if values else float("nan")


def summary_row(name: str, figures: list[CallFigures], attack: Attack, health_ms: float) -> str:
    g = _median([f.greeting_ttfa_ms for f in figures])
    t = _median([f.turn_ttfa_ms for f in figures])
    errors = Counter(f.error for f in figures if f.error)
    under = sum(f.underruns for f in figures)
    under_ms = sum(f.underrun_ms for f in figures)
    ok = sum(f.ok for f in figures)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(attack.counts.items()))
    failed = "".join(f" ({k} x{v})" for k, v in errors.items())
    g_max = max((f.greeting_ttfa_ms for f in figures if f.ok), default=float("nan"))
    t_max = max((f.turn_ttfa_ms for f in figures if f.ok), default=float("nan"))
    w = _median([f.webhook_ms for f in figures])
    return (f"| {name} | {g:.0f} | {g_max:.0f} | {w:.0f} | {t:.0f} | {t_max:.0f} | "
            f"{under} ({under_ms:.0f} ms) | "
            f"{ok}/{len(figures)}{failed} | "
            f"{health_ms:.0f} | {counts or '-'} |")


async def main_async(args: argparse.Namespace) -> int:
    print(f"fd limit: {raise_fd_limit()}", flush=True)
    rows = []
    for name in args.scenarios:
        figures, attack, health = await scenario(name, args.calls, args.settle)
        rows.append(summary_row(name, figures, attack, health))
        print(rows[-1], flush=True)
    print("\n| scenario | greeting TTFA p50 (ms) | max | of which webhook p50 | agent-turn TTFA p50 (ms) "
          "| max | underruns | calls ok | /health (ms) | attack counters |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3, help="live calls per scenario (default 3)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds an attack runs before the call")
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 20:
        parser.error("--calls must be 1..20")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
