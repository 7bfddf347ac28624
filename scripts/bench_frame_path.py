#!/usr/bin/env python
"""Side by side, in one run: today's frame path vs the lean one, under the same load test.

Starts one bridge per stack, each pinned to the same core (``--bridge-core``), and replays
``ivr_prompts`` (greeting + fixed prompts from the phrase cache, caller audio streamed in at 50
messages a second) against each in turn with ``scripts/loadtest.py`` pinned to other cores
(``--client-cores``). Rounds interleave the stacks (A B, B A, ...) so the noise of a shared machine
falls on both. Per run it records: calls, the bridge's and the emulator's underruns, TTFA p95, the
bridge's CPU per call-second (CPU seconds / sum of call durations), the load generator's own CPU
and event-loop lag (a busy generator causes underruns of its own), and the bridge's RSS at idle
and at peak (RSS per call = (peak - idle) / calls).

Stacks:
- ``base``: the code at ``--baseline-ref`` (default: the commit before the lean path), exported
  with ``git archive`` to a temporary directory and served as it was (uvicorn + ASGI route);
- ``lean``: this checkout, ``/media-stream`` on the picows listener (``--stream-port``) plus the
  lazy inbound path;
- ``asgi``: this checkout on the ASGI route (isolates the inbound changes from the listener);
- ``lean-stt``: ``lean`` with the embedded recogniser on (VOICE_BRIDGE_STT=local): what listening
  (turn detection on every caller frame, Whisper at each end of turn) costs per call.

Load generator: the lean one by default (``scripts/loadtest.py --lean``: one shared 20 ms ticker,
raw sockets: 1.6-2.8 ms of CPU per call-second, a third of the emulator one's, so its own
lateness stays out of the underrun figures); ``--generators emulator`` uses the TwilioEmulator per
call (5.5-9 ms per call-second measured alongside), ``--generators lean emulator`` runs both
against every stack, to check they report the same picture. Each row gives the generator's own
CPU per call-second.

Usage:
  PYTHONPATH=. .venv/bin/python scripts/bench_frame_path.py --calls 100 200 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "calls" / "ivr_prompts.jsonl"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class Bridge:
    def __init__(self, name: str, src: Path, port: int, *, lean: bool, core: str, stt: str) -> None:
        self.name = name
        self.port = port
        args = [sys.executable, "-m", "telephony", "serve", "--insecure-dev", "--port", str(port),
                "--log-level", "warning"]
        if lean:
            args += ["--stream-port", str(port + 1)]
        env = {**os.environ, "PYTHONPATH": str(src), "VOICE_BRIDGE_STT": stt}
        self.log = open(Path(tempfile.gettempdir()) / f"bench_frame_path_{name}.log", "w")
        self.proc = subprocess.Popen(["taskset", "-c", core, *args], cwd=src, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} bridge exited; see {self.log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"{self.name} bridge not ready after {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def load(bridge: Bridge, calls: int, ramp_s: float, cores: str, out: Path,
         generator: str = "lean") -> dict[str, Any]:
    """One load test against ``bridge``; returns the figures of one table row."""
    pid = bridge.proc.pid
    idle = rss_bytes(pid)
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            try:
                peak[0] = max(peak[0], rss_bytes(pid))
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cmd = ["taskset", "-c", cores, sys.executable, str(ROOT / "scripts" / "loadtest.py"), str(FIXTURE),
           "--url", f"http://127.0.0.1:{bridge.port}", "--calls", str(calls), "--ramp-up", str(ramp_s),
           "--server-pid", str(pid), "--quiet", "--json", str(out)]
    if generator == "lean":
        cmd.append("--lean")
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    stop.set()
    sampler.join()
    data = json.loads(out.read_text())
    call_s = sum(c["duration_s"] or 0 for c in data["per_call"])
    cpu = data["cpu"]
    counters = data.get("bridge_counters") or {}
    return {
        "stack": bridge.name, "generator": generator, "calls": calls,
        "completed": data["calls"]["completed"],
        "errors": data["errors"]["total"],
        "bridge_underruns": int(counters.get("underruns_total", 0)),
        "heard_underruns": data["underruns"]["count"],
        "ttfa_p50_ms": data["ttfa_ms"]["p50"], "ttfa_p95_ms": data["ttfa_ms"]["p95"],
        "cpu_ms_per_call_s": round(1000 * cpu["server_cpu_s"] / call_s, 3) if call_s else None,
        "bridge_cpu_pct": cpu["server_cpu_pct"],
        "client_cpu_s": cpu["client_cpu_s"],
        "client_ms_per_call_s": round(1000 * cpu["client_cpu_s"] / call_s, 3) if call_s else None,
        "frames": data["frames_received"],
        "marks_echoed": sum(c["marks_echoed"] for c in data["per_call"]),
        "mark_rtt_p50_ms": data["mark_rtt_ms"]["p50"],
        "client_lag_p99_ms": data["client_loop_lag_ms"]["p99"],
        "rss_idle_mb": round(idle / 2**20, 1), "rss_peak_mb": round(peak[0] / 2**20, 1),
        "rss_kb_per_call": round((peak[0] - idle) / 1024 / calls, 1),
    }


def export_ref(ref: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, nargs="+", default=[100])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ramp-up", type=float, default=5.0)
    parser.add_argument("--stacks", nargs="+", default=["base", "lean"],
                        choices=["base", "lean", "asgi", "lean-stt"])
    parser.add_argument("--baseline-ref", default="eddf09e",
                        help="git ref of today's stack (default: the commit before the lean path)")
    parser.add_argument("--stt", default="off", choices=["off", "local"],
                        help="the bridges' recogniser (off: the transport alone)")
    parser.add_argument("--bridge-core", default="0")
    parser.add_argument("--client-cores", default="1")
    parser.add_argument("--generators", nargs="+", default=["lean"], choices=["lean", "emulator"],
                        help="load generator(s): lean (default, scripts/loadtest.py --lean) and/or "
                             "emulator (one TwilioEmulator per call)")
    parser.add_argument("--port", type=int, default=18400)
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args(argv)

    print(f"load generator: {' and '.join(args.generators)} (pinned to cores {args.client_cores}; "
          "lean = scripts/loadtest.py --lean)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_frame_path_"))
    bridges: list[Bridge] = []
    rows: list[dict[str, Any]] = []
    try:
        for i, name in enumerate(args.stacks):
            if name == "base":
                (tmp / "base").mkdir(exist_ok=True)
            src = export_ref(args.baseline_ref, tmp / "base") if name == "base" else ROOT
            bridges.append(Bridge(name, src, args.port + 10 * i, lean=name.startswith("lean"),
                                  core=args.bridge_core,
                                  stt="local" if name == "lean-stt" else args.stt))
        for bridge in bridges:
            bridge.wait_ready()
            load(bridge, 4, 0.5, args.client_cores, tmp / f"warm_{bridge.name}.json",
                 args.generators[0])  # phrase cache
        for round_no in range(args.rounds):
            for calls in args.calls:
                order = bridges if round_no % 2 == 0 else list(reversed(bridges))
                gens = args.generators if round_no % 2 == 0 else list(reversed(args.generators))
                for bridge in order:
                    for gen in gens:
                        row = load(bridge, calls, args.ramp_up, args.client_cores,
                                   tmp / f"r{round_no}_{bridge.name}_{gen}_{calls}.json", gen)
                        row["round"] = round_no
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        for bridge in bridges:
            bridge.stop()
    cols = ["round", "stack", "generator", "calls", "bridge_underruns", "heard_underruns", "ttfa_p50_ms",
            "ttfa_p95_ms", "cpu_ms_per_call_s", "bridge_cpu_pct", "client_ms_per_call_s",
            "client_lag_p99_ms", "frames", "marks_echoed", "mark_rtt_p50_ms", "rss_kb_per_call",
            "errors"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
