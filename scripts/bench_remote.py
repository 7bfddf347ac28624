#!/usr/bin/env python3
"""The remote engine (``VOICE_BRIDGE_ENGINE=openai``) side by side with the local Piper engine.

A. Time to first audio through the bridge: from the agent's text (a whole sentence, new each call)
   to the first Twilio frame at the emulated Twilio, against the engine's own first audio for that
   turn (the bridge's per-call log line; for the remote engine that is the server's first audio byte
   as this bridge received it). The difference is what the bridge adds: segmenter, encoder, pacer,
   socket. Remote: a bridge whose engine is a second bridge process serving the Piper voice through
   ``/v1/audio/speech``. Local: a bridge running Piper itself. Target: overhead p95 < 10 ms.

B. Calls carried by one bridge process with zero underruns: the load test replays
   ``dialogue_dtmf`` with N concurrent calls (phrase cache off, so every call's speech is streamed
   from the engine). Local: Piper on the bridge's own core. Remote: loopback speech servers (bridges
   running the synthetic engine paced like a GPU server: first chunk after
   ``--server-first-chunk-ms``, then ``--server-rtf`` x real time). The bridge is pinned to core 0;
   the speech servers and the load generator share core 1. Target: >= 100 calls on one core.

    PYTHONPATH=. .venv/bin/python scripts/bench_remote.py                      # both parts
    PYTHONPATH=. .venv/bin/python scripts/bench_remote.py --part ttfa --utterances 30
    PYTHONPATH=. .venv/bin/python scripts/bench_remote.py --part capacity --remote-calls 100 150

Only loopback is used; every process is started and stopped by the script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import websockets

from telephony.testing.bridge_process import BridgeProcess, bridge_process
from telephony.testing.fake_agents import OneTurnAgent
from telephony.testing.twilio_emulator import TwilioEmulator

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-remote-key"
SENTENCES = [
    "Your order shipped this morning and should arrive on Thursday",
    "The store opens at nine and closes at six on weekdays",
    "I have moved your appointment to Tuesday at three in the afternoon",
    "Your balance is forty two dollars and ten cents",
    "A technician can visit between eight and noon tomorrow",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# ---- A: time to first audio -----------------------------------------------------------------------
def sentence_for(call_sid: str) -> str:
    """A new sentence per call (never a phrase-cache hit), sent as one text message."""
    n = int(call_sid[-6:])
    return f"{SENTENCES[n % len(SENTENCES)]}, reference {n}."


async def one_call(client: httpx.AsyncClient, bridge: BridgeProcess, sid: str, agent_url: str,
                   agent: OneTurnAgent) -> float:
    response = await client.post(f"{bridge.base_url}/twiml",
                                 params={"greeting": "", "agentUrl": agent_url}, data={"CallSid": sid})
    response.raise_for_status()
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    call = TwilioEmulator(stream.attrib["url"], call_sid=sid, stream_sid="MZ" + sid[2:],
                          custom_parameters=params, keep_audio=False)
    await call.connect()
    try:
        if not await call.wait_for(lambda: call.stats.utterances, 20):
            raise RuntimeError(f"{sid}: no audio")
        return (call.stats.utterances[0].first_frame_received - agent.first_token_sent[sid]) * 1000
    finally:
        await call.hang_up()


def engine_first_chunks(log: str) -> dict[str, float]:
    found = {}
    for line in log.splitlines():
        match = re.search(r"voice_bridge\.call: call (\{.*\})$", line)
        if match:
            summary = json.loads(match.group(1))
            turns = summary["turns"]
            if turns and turns[0].get("engine_first_chunk_ms") is not None:
                found[summary["call_sid"]] = turns[0]["engine_first_chunk_ms"]
    return found


async def ttfa_run(bridge: BridgeProcess, utterances: int, label: str) -> dict[str, list[float]]:
    agent = OneTurnAgent(sentence_for, tokens_for=lambda _sid, text: [text])
    async with websockets.serve(agent.handler, "127.0.0.1", 0) as server:
        agent_url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/agent"
        async with httpx.AsyncClient(timeout=30) as client:
            await client.post(f"{bridge.base_url}/warmup", json={})
            ttfa = {}
            for i in range(utterances):
                sid = f"CA{label}{i:06d}"
                ttfa[sid] = await one_call(client, bridge, sid, agent_url, agent)
                print(f"\r{label}: {i + 1}/{utterances}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            health = (await client.get(f"{bridge.base_url}/health")).json()
    await asyncio.sleep(0.5)  # the last call's log line
    engine = engine_first_chunks(bridge.log())
    pairs = [(ttfa[sid], engine[sid]) for sid in ttfa if sid in engine]
    servers = health["engine"].get("servers", [])
    return {"ttfa": [t for t, _ in pairs], "engine": [e for _, e in pairs],
            "overhead": [t - e for t, e in pairs],
            "server_first_byte_p50": [s["first_byte_ms_p50"] for s in servers],
            "server_first_byte_p95": [s["first_byte_ms_p95"] for s in servers]}


async def part_ttfa(utterances: int) -> None:
    common = ("--insecure-dev", "--log-level", "info", "--preset", "adaptive", "--stt", "off")
    results = {}
    async with bridge_process("--insecure-dev", "--log-level", "warning", "--engine", "piper", "--stt", "off",
                              env={"VOICE_BRIDGE_API_KEY": API_KEY}) as server:
        env = {"VOICE_BRIDGE_ENGINE_URL": server.api_base, "VOICE_BRIDGE_ENGINE_API_KEY": API_KEY,
               "VOICE_BRIDGE_ENGINE_VOICES": "joe"}
        async with bridge_process(*common, "--engine", "openai", env=env) as bridge:
            results["remote Piper (second bridge over HTTP)"] = await ttfa_run(bridge, utterances, "R")
    async with bridge_process(*common, "--engine", "piper") as bridge:
        results["local Piper (in process)"] = await ttfa_run(bridge, utterances, "L")

    print(f"\nA. Time to first audio, {utterances} utterances each, preset adaptive, loopback, "
          f"{os.cpu_count()} cores\n")
    print("| engine | n | TTFA p50 / p95 (ms) | engine first audio p50 / p95 (ms) | "
          "bridge overhead p50 / p95 (ms) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {len(r['ttfa'])} | {pct(r['ttfa'], 50):.1f} / {pct(r['ttfa'], 95):.1f} | "
              f"{pct(r['engine'], 50):.1f} / {pct(r['engine'], 95):.1f} | "
              f"{pct(r['overhead'], 50):.1f} / {pct(r['overhead'], 95):.1f} |")
    remote = results["remote Piper (second bridge over HTTP)"]
    if remote["server_first_byte_p50"]:
        print(f"\nremote server's first audio byte as the fleet saw it (all requests incl. warmup): "
              f"p50 {remote['server_first_byte_p50'][0]} ms, p95 {remote['server_first_byte_p95'][0]} ms")


# ---- B: capacity ---------------------------------------------------------------------------------
def loadtest(url: str, calls: int, out: Path) -> dict:
    command = ["taskset", "-c", "1", sys.executable, str(ROOT / "scripts" / "loadtest.py"),
               str(ROOT / "tests" / "data" / "calls" / "dialogue_dtmf.jsonl"), "--url", url,
               "--calls", str(calls), "--ramp-up", str(max(1.0, calls / 20)), "--server-pid", "auto",
               "--json", str(out), "--quiet"]
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=300)
    return json.loads(out.read_text())


@contextlib.asynccontextmanager
async def speech_servers(count: int, first_chunk_ms: float, rtf: float
                         ) -> AsyncIterator[list[BridgeProcess]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(bridge_process(
            "--insecure-dev", "--log-level", "warning", "--engine", "synthetic", "--stt", "off", cpu=1,
            env={"VOICE_BRIDGE_API_KEY": API_KEY, "VOICE_BRIDGE_ENGINE_CONCURRENCY": "64",
                 "VOICE_BRIDGE_SYNTHETIC_FIRST_CHUNK_MS": str(first_chunk_ms),
                 "VOICE_BRIDGE_SYNTHETIC_REALTIME_FACTOR": str(rtf)})) for _ in range(count)]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes, from /proc."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def capacity_runs(bridge_args: tuple[str, ...], env: dict[str, str], ladder: list[int],
                        servers: list[BridgeProcess] | None = None) -> list[tuple[int, dict]]:
    rows = []
    # Recognition off: a local Whisper decode per caller turn is the CPU cost that grows with calls
    # (bench_stt.py measures it; at scale it is remote too, VOICE_BRIDGE_STT=openai). Here the
    # engine path is what is measured.
    async with bridge_process(*bridge_args, cpu=0, env={"VOICE_BRIDGE_PHRASE_CACHE_MB": "0",
                                                        "VOICE_BRIDGE_STT": "off", **env}) as bridge:
        with tempfile.TemporaryDirectory() as tmp:
            for calls in ladder:
                server_pids = [s.process.pid for s in servers or []]
                before = cpu_seconds(server_pids)
                report = await asyncio.to_thread(loadtest, bridge.base_url, calls,
                                                 Path(tmp) / f"{calls}.json")
                async with httpx.AsyncClient(timeout=10) as client:
                    servers_now = (await client.get(f"{bridge.base_url}/health")).json()["engine"].get(
                        "servers", [])
                report["first_byte_ms"] = [(s["first_byte_ms_p50"], s["first_byte_ms_p95"])
                                           for s in servers_now]
                if server_pids:
                    report["speech_servers_cpu_pct"] = round(
                        100 * (cpu_seconds(server_pids) - before) / max(report["elapsed_s"], 1e-9), 1)
                rows.append((calls, report))
                print(f"  {calls} calls: underruns {report['underruns']['count']}", file=sys.stderr)
    return rows


def capacity_row(name: str, calls: int, report: dict) -> str:
    ttfa = report["ttfa_agent_ms"]
    bridge_underruns = int(report["bridge_counters"].get("underruns_total", 0))
    errors = report["errors"]["total"]
    generator = report["cpu"]["client_cpu_s"] / max(report["elapsed_s"], 1e-9) * 100
    other = f"{report.get('speech_servers_cpu_pct', '-')}% + {generator:.0f}%"
    first_byte = ", ".join(f"{p50} / {p95}" for p50, p95 in report.get("first_byte_ms", [])) or "-"
    return (f"| {name} | {calls} | {report['calls']['completed']} | {report['underruns']['count']} "
            f"({report['underruns']['total_ms']:.0f} ms) | {bridge_underruns} | "
            f"{ttfa['p50']} / {ttfa['p95']} | {first_byte} | {report['cpu']['server_cpu_pct']}% | "
            f"{other} | {errors} |")


async def part_capacity(piper_ladder: list[int], remote_ladder: list[int], servers: int,
                        first_chunk_ms: float, rtf: float) -> None:
    base = ("--insecure-dev", "--log-level", "warning")
    print("local Piper ...", file=sys.stderr)
    local = await capacity_runs((*base, "--engine", "piper"), {}, piper_ladder)
    print("remote ...", file=sys.stderr)
    async with speech_servers(servers, first_chunk_ms, rtf) as remotes:
        env = {"VOICE_BRIDGE_ENGINE_URL": ",".join(s.api_base for s in remotes),
               "VOICE_BRIDGE_ENGINE_API_KEY": API_KEY, "VOICE_BRIDGE_ENGINE_VOICES": "synthetic",
               "VOICE_BRIDGE_ENGINE_CONCURRENCY": "256"}
        remote = await capacity_runs((*base, "--engine", "openai"), env, remote_ladder, remotes)

    print(f"\nB. Concurrent dialogue_dtmf calls on one bridge process pinned to one core (phrase cache "
          f"off). Remote: {servers} loopback speech server(s), first chunk {first_chunk_ms:g} ms, "
          f"{rtf:g}x real time; speech servers and load generator on the other core.\n")
    print("| engine | calls | completed | underruns heard (silence) | bridge's underrun count | "
          "agent TTFA p50 / p95 (ms) | each server's first audio byte p50 / p95 (ms) | bridge CPU (core 0) "
          "| speech servers + load generator CPU (core 1) | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for calls, report in local:
        print(capacity_row("local Piper", calls, report))
    for calls, report in remote:
        print(capacity_row("remote (openai engine)", calls, report))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["ttfa", "capacity", "all"], default="all")
    parser.add_argument("--utterances", type=int, default=30)
    parser.add_argument("--piper-calls", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--remote-calls", type=int, nargs="+", default=[50, 100, 150])
    parser.add_argument("--servers", type=int, default=2, help="loopback speech servers (part B)")
    parser.add_argument("--server-first-chunk-ms", type=float, default=80.0)
    parser.add_argument("--server-rtf", type=float, default=0.1)
    args = parser.parse_args()
    if args.part in ("ttfa", "all"):
        await part_ttfa(args.utterances)
    if args.part in ("capacity", "all"):
        await part_capacity(args.piper_calls, args.remote_calls, args.servers,
                            args.server_first_chunk_ms, args.server_rtf)


if __name__ == "__main__":
    asyncio.run(main())
