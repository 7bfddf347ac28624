#!/usr/bin/env python
"""Long fuzz runs against a production-mode bridge process: the surfaces of tests/test_fuzz.py, for as
long as asked, with the number of cases and outcomes per surface printed at the end.

Starts ``voice-bridge serve`` on loopback (auth token + PUBLIC_URL + operator key, synthetic engine),
opens a reference call that must keep playing, and runs Hypothesis over each surface in turn (chunks
of ``--chunk`` cases, a new seed per chunk) until ``--seconds`` or ``--cases`` is reached: the
webhook, /warmup and /preload, /v1/audio/speech, stream messages after a valid start, mutated
starts, and messages from a hostile ConversationRelay agent. A failure (5xx, wrong error shape,
stream closed with 1011/1006, ...) is printed with its shrunk input and the run goes on. At the end
the bridge's log is searched for tracebacks. Exit status 0 when nothing failed.

Usage:
  PYTHONPATH=. .venv/bin/python scripts/fuzz.py --seconds 120
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from telephony.testing import fuzz_strategies as fs
from telephony.testing.fuzz_harness import (
    AgentFuzzer,
    LoopThread,
    ReferenceCall,
    StreamFuzzer,
    Target,
    operator_probe,
    speech_probe,
    start_probe,
    start_prototype,
    webhook_probe,
)
from telephony.testing.signed_call import AUTH_TOKEN, OPERATOR_KEY, production_bridge


class Run:
    def __init__(self, thread: LoopThread, http: httpx.AsyncClient, target: Target) -> None:
        self.thread, self.http, self.target = thread, http, target
        self.cases: Counter[str] = Counter()
        self.outcomes: dict[str, Counter[str]] = {}
        self.failures: Counter[str] = Counter()

    def surfaces(self, template: dict[str, Any]) -> dict[str, tuple[st.SearchStrategy[Any],
                                                                     Callable[[Any], Any]]]:
        stream = StreamFuzzer(self.http, self.target)
        agent = AgentFuzzer(self.http, self.target)
        self.thread.run(agent.start())
        self.finishers = [stream.finish, agent.finish]
        lists = st.lists
        return {
            "webhook": (fs.webhook_cases, lambda c: webhook_probe(self.http, self.target, c)),
            "operator": (fs.operator_cases, lambda c: operator_probe(self.http, self.target, c)),
            "speech": (fs.speech_cases, lambda c: speech_probe(self.http, self.target, c)),
            "stream messages": (lists(fs.twilio_messages, min_size=1, max_size=6), stream.probe),
            "stream start": (fs.mutated_start(template), lambda m: start_probe(self.http, self.target, m)),
            "agent messages": (lists(fs.agent_messages, min_size=1, max_size=6), agent.probe),
        }

    def chunk(self, name: str, strategy: st.SearchStrategy[Any], probe: Callable[[Any], Any], n: int,
              chunk_seed: int, reference: ReferenceCall) -> None:
        outcomes = self.outcomes.setdefault(name, Counter())

        @seed(chunk_seed)
        @settings(max_examples=n, deadline=None, database=None, print_blob=False,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case: Any) -> None:
            self.cases[name] += 1
            if self.cases[name] % 5 == 0:
                self.thread.run(reference.poke())
            outcomes[self.thread.run(probe(case))] += 1

        try:
            run()
        except Exception:
            self.failures[name] += 1
            print(f"\n[{name}] FAILURE:\n{traceback.format_exc()[-3000:]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long (default 60)")
    parser.add_argument("--cases", type=int, default=0,
                        help="stop after this many cases in all (0: no limit)")
    parser.add_argument("--chunk", type=int, default=50, help="cases per surface before the next one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 24 * 3600 or args.chunk < 1:
        parser.error("--seconds must be in (0, 86400], --chunk >= 1")
    thread = LoopThread()
    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[Any, httpx.AsyncClient]:
        bridge = await stack.enter_async_context(production_bridge())
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=20))
        return bridge, http

    started = time.monotonic()
    bridge, http = thread.run(start(), timeout=90)
    target = Target(bridge.base_url, AUTH_TOKEN, OPERATOR_KEY)
    run = Run(thread, http, target)
    status = 0
    try:
        reference = thread.run(ReferenceCall.open(http, target))
        prototype = thread.run(start_prototype(http, target))
        surfaces = run.surfaces(fs.start_template("__CALL_SID__", "__STREAM_SID__", prototype))
        round_ = 0
        while time.monotonic() - started < args.seconds and (not args.cases
                                                              or sum(run.cases.values()) < args.cases):
            for name, (strategy, probe) in surfaces.items():
                if time.monotonic() - started >= args.seconds:
                    break
                run.chunk(name, strategy, probe, args.chunk, args.seed * 1_000_003 + round_, reference)
            round_ += 1
            counts = "  ".join(f"{k}: {v}" for k, v in run.cases.items())
            print(f"{time.monotonic() - started:6.0f} s  {counts}", flush=True)
        for finish in run.finishers:
            try:
                thread.run(finish())
            except Exception as exc:
                run.failures["finish"] += 1
                print(f"finish failed: {exc!r}")
        summary = thread.run(reference.check())
        print(f"\nreference call: {summary}")
        thread.run(reference.close())
    except Exception:
        traceback.print_exc()
        status = 1
    finally:
        log = bridge.log()
        thread.run(stack.aclose(), timeout=60)
        thread.close()
    tracebacks = log.count("Traceback")
    print("\n| surface | cases | failures | outcomes |\n|---|---|---|---|")
    for name, count in run.cases.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in run.outcomes.get(name, Counter()).most_common(6))
        print(f"| {name} | {count} | {run.failures[name]} | {outcomes} |")
    print(f"\ntotal {sum(run.cases.values())} cases in {time.monotonic() - started:.0f} s; "
          f"tracebacks in the bridge log: {tracebacks}")
    return 1 if status or tracebacks or sum(run.failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
