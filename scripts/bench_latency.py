#!/usr/bin/env python3
"""Time to first audio, measured end to end against a real bridge process on loopback.

Two figures, each side by side with its baseline in the same run:
  A. pre-rendered greeting: from Twilio's ``start`` to the first outbound media frame
     (baseline: the same greeting rendered live, i.e. without the webhook's pre-render);
  B. agent turn: from the agent's first text message of a new turn (a whole first sentence, then
     the rest streamed token by token) to the first media frame, against the engine's own
     first-chunk time for that turn (read from the bridge's per-call log line): the bridge's
     overhead = B - engine first chunk;
  C. the same with every word streamed as its own token at 30 ms/token: the segmenter must wait
     for a speakable phrase, so C = text wait + engine first chunk + overhead, each reported.

Usage: .venv/bin/python scripts/bench_latency.py [--engine piper] [--calls 30]
Only loopback is used; the bridge is started and stopped by the script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import httpx
import websockets

from telephony.testing.fake_agents import OneTurnAgent, word_tokens
from telephony.testing.twilio_emulator import TwilioEmulator

GREETING = "Thanks for calling. How can I help you today?"
AGENT_TURNS = [
    "Sure, I can help with that. Your order shipped this morning.",
    "Of course. The store opens at nine and closes at six.",
    "Got it, one moment. I have moved your appointment to Tuesday.",
    "Absolutely. Your balance is forty two dollars and ten cents.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def row(name: str, values: list[float]) -> str:
    return (f"| {name} | {len(values)} | {pct(values, 50):.1f} | {pct(values, 95):.1f} | "
            f"{max(values):.1f} |")


def agent_text(call_sid: str) -> str:
    return AGENT_TURNS[hash(call_sid) % len(AGENT_TURNS)] + f" Reference {call_sid[-4:]}."


def agent_tokens(sentence_first: set[str]) -> Callable[[str, str], list[str]]:
    """Calls in ``sentence_first`` get their first sentence in one message, then word by word."""
    def tokens(call_sid: str, text: str) -> list[str]:
        if call_sid not in sentence_first:
            return word_tokens(text)
        first, _, rest = text.partition(". ")
        return [first + ".", *(" " + word for word in rest.split(" "))]
    return tokens


async def open_call(client: httpx.AsyncClient, base: str, call_sid: str, query: str,
                    dial_delay: float) -> TwilioEmulator:
    response = await client.post(f"{base}/twiml{query}", data={"CallSid": call_sid})
    response.raise_for_status()
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    await asyncio.sleep(dial_delay)  # Twilio connects the stream a moment after the webhook
    call = TwilioEmulator(stream.attrib["url"], call_sid=call_sid, stream_sid="MZ" + call_sid[2:],
                          custom_parameters=params, keep_audio=False)
    await call.connect()
    return call


async def measure(base: str, calls: int, agent: OneTurnAgent, sentence_first: set[str],
                  agent_url: str) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"cached": [], "live": [], "agent": [], "streamed": []}
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(calls):
            # A: greeting pre-rendered by the webhook (same text every call, as in production).
            call = await open_call(client, base, f"CA{i:030d}A", f"?greeting={GREETING}", 0.5)
            assert await call.wait_for(lambda c=call: c.stats.utterances, 10)
            results["cached"].append((call.stats.utterances[0].first_frame_received
                                      - call.start_sent_at) * 1000)
            await call.hang_up()
            # Baseline for A: a greeting the bridge has never seen, rendered when the stream starts.
            # (insecure dev mode: the stream needs no webhook token, so no pre-render happens)
            unique = f"{GREETING} This is call number {i}."
            call = TwilioEmulator(base.replace("http", "ws") + "/media-stream", call_sid=f"CA{i:030d}L",
                                  custom_parameters={"greeting": unique}, keep_audio=False)
            await call.connect()
            assert await call.wait_for(lambda c=call: c.stats.utterances, 10)
            results["live"].append((call.stats.utterances[0].first_frame_received
                                    - call.start_sent_at) * 1000)
            await call.hang_up()
            # B: an agent turn, first sentence in one message; C: every word its own token.
            for kind, suffix in (("agent", "B"), ("streamed", "C")):
                sid = f"CA{i:030d}{suffix}"
                if kind == "agent":
                    sentence_first.add(sid)
                call = await open_call(client, base, sid, f"?greeting=&agentUrl={agent_url}", 0.0)
                assert await call.wait_for(lambda c=call: c.stats.utterances, 10)
                results[kind].append((call.stats.utterances[0].first_frame_received
                                      - agent.first_token_sent[sid]) * 1000)
                results.setdefault(f"{kind}_sids", []).append(sid)  # type: ignore[arg-type]
                await call.hang_up()
            print(f"\r{i + 1}/{calls} calls", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return results


def first_turns(log_path: Path) -> dict[str, dict[str, float]]:
    """The first turn of every call, from the bridge's per-call log lines."""
    found: dict[str, dict[str, float]] = {}
    for line in log_path.read_text().splitlines():
        match = re.search(r"voice_bridge\.call: call (\{.*\})$", line)
        if match:
            summary = json.loads(match.group(1))
            if summary["turns"] and summary["turns"][0].get("engine_first_chunk_ms") is not None:
                found[summary["call_sid"]] = summary["turns"][0]
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="piper", choices=["piper", "synthetic"])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()

    sentence_first: set[str] = set()
    agent = OneTurnAgent(agent_text, tokens_for=agent_tokens(sentence_first))
    agent_server = await websockets.serve(agent.handler, "127.0.0.1", 0)
    agent_url = f"ws://127.0.0.1:{agent_server.sockets[0].getsockname()[1]}/agent"
    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_latency_{port}.log"
    env = {**os.environ, "VOICE_BRIDGE_LOG_LEVEL": "info"}
    with log_path.open("w") as log:
        server = subprocess.Popen(  # noqa: ASYNC220 - started once, before any timing
            [sys.executable, "-m", "telephony", "serve", "--insecure-dev", "--engine", args.engine,
             "--port", str(port), "--preset", "adaptive"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base}/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            await client.post(f"{base}/warmup", json={})
        results = await measure(base, args.calls, agent, sentence_first, agent_url)
    finally:
        server.terminate()
        server.wait(10)
        agent_server.close()
    turns = first_turns(log_path)

    def split(kind: str) -> tuple[list[float], list[float], list[float], list[float]]:
        sids = results.pop(f"{kind}_sids")  # type: ignore[arg-type]
        pairs = [(ttfa, turns[sid]) for sid, ttfa in zip(sids, results[kind], strict=True) if sid in turns]
        waits = [t["text_wait_ms"] for _, t in pairs]
        engine = [t["engine_first_chunk_ms"] for _, t in pairs]
        overhead = [ttfa - t["text_wait_ms"] - t["engine_first_chunk_ms"] for ttfa, t in pairs]
        return [ttfa for ttfa, _ in pairs], waits, engine, overhead

    b_ttfa, _, b_engine, b_overhead = split("agent")
    c_ttfa, c_wait, c_engine, c_overhead = split("streamed")
    print(f"\nvoice-bridge time to first audio, engine={args.engine}, preset=adaptive, "
          f"{args.calls} calls each, loopback, {os.cpu_count()} cores\n")
    print("| measurement (ms) | n | p50 | p95 | max |")
    print("|---|---|---|---|---|")
    print(row("A: start -> first frame, greeting pre-rendered by the webhook", results["cached"]))
    print(row("A baseline: start -> first frame, greeting rendered live", results["live"]))
    print(row("B: agent's first sentence -> first frame", b_ttfa))
    print(row("B: engine first chunk (same turns)", b_engine))
    print(row("B - engine first chunk = bridge overhead", b_overhead))
    print(row("C: agent's first word token (30 ms/token) -> first frame", c_ttfa))
    print(row("C: waiting for a speakable phrase (agent token pace)", c_wait))
    print(row("C: engine first chunk", c_engine))
    print(row("C: bridge overhead", c_overhead))
    print(f"\npre-render speed-up at p95: {pct(results['live'], 95) / pct(results['cached'], 95):.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
