#!/usr/bin/env python
"""Load test: replay recorded calls (docs/recorded-calls.md) against a running bridge.

For every call it POSTs /twiml (signed with --auth-token, or unsigned for a bridge started with
--insecure-dev), opens the Media Stream it is told to, plays Twilio's side with the TwilioEmulator
(caller audio, DTMF and stop on their recorded timing; playback emulated at 160 bytes per 20 ms;
marks echoed; every outbound message validated), and serves the call's recorded agent turns from
one loopback ConversationRelay agent server (agentUrl=ws://127.0.0.1:<port>/<call-id>). A bridge
with an auth token refuses loopback agents unless told: start it with
VOICE_BRIDGE_AGENT_ALLOW_HOSTS=127.0.0.1 (under --insecure-dev loopback is allowed).

Measured, overall and per call:
* TTFA per turn: from the agent's first token being sent (for the greeting: from ``start``) to the
  first media frame of the bridge's answer (p50/p90/p95/p99/max);
* underruns: gaps inside an utterance when the emulated Twilio buffer ran dry (count, total ms);
* barge-in reaction: from the onset of caller speech to the ``clear`` received;
* mark round trip: from a mark's arrival to its echo (the audio the bridge keeps buffered ahead);
* delivery RTF: wall time over which an utterance's frames arrived / its audio length (below 1
  when the bridge keeps ahead of real time, above 1 when it falls behind);
* errors: invalid outbound messages, closes with unexpected codes, timeouts, failed webhooks;
* the bridge process's CPU (utime+stime from /proc, --server-pid or found by its port); a bridge
  started with ``--workers N`` is N+1 processes holding the port (the supervisor and its workers):
  their CPU is added up, and listed per process.

``--processes K`` runs the load generator itself as K processes (the calls split between them), so
it can keep up with a bridge that has several cores; the report is over all their calls.

Usage:
  voice-bridge serve --insecure-dev --engine synthetic &
  .venv/bin/python scripts/loadtest.py --calls 20 --ramp-up 10 --json out/load.json --plot out/load.png

Exit status: 0 when the run completed without errors (underruns included, unless
--fail-on-underrun), 1 on protocol errors / failed calls / timeouts, 3 on underruns with
--fail-on-underrun, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from telephony.recorded_call import RecordedCall, find_recordings, load_recording
from telephony.testing.replay import CallReplay, check_loopback
from telephony.testing.replay_agent import AgentServer
from telephony.testing.replay_result import CallResult, summarize

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_RECORDINGS = ROOT / "tests" / "data" / "calls"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class LoadConfig:
    url: str = "http://127.0.0.1:8080"
    recordings: list[RecordedCall] = field(default_factory=list)
    calls: int = 4
    ramp_up_s: float = 0.0
    duration_s: float = 120.0
    """Wall-clock cap for the whole run: calls still running then are hung up (status ``cut``)."""
    loop: bool = False
    """Start a new call in a slot when its call ends, until the duration is over."""
    auth_token: str | None = None
    public_url: str | None = None
    """The bridge's PUBLIC_URL, if set: webhook signatures are computed over it."""
    voice: str | None = None
    preset: str | None = None
    server_pid: int | str | None = "auto"
    """A pid, ``auto`` (from /health's pid, else the process listening on the url's port) or None."""
    tail_timeout_s: float = 10.0
    allow_remote: bool = False
    keep_timelines: bool = False
    progress: Callable[[Progress], None] | None = None
    progress_interval_s: float = 0.5
    processes: int = 1
    """Load generator processes (the calls are split between them)."""
    call_prefix: str = "c"
    clock_zero: float | None = None
    """The run's start (CLOCK_MONOTONIC is system-wide): shared by the generator processes."""
    measure_bridge: bool = True
    """False in the generator processes of ``--processes``: the parent measures the bridge."""


@dataclass
class Progress:
    elapsed_s: float
    duration_s: float
    planned: int
    started: int
    finished: int
    active: int
    frames: int
    underruns: int
    errors: int


@dataclass
class Report:
    data: dict[str, Any]
    calls: list[CallResult]

    @property
    def ok(self) -> bool:
        return self.data["errors"]["total"] == 0

    @property
    def underruns(self) -> int:
        return int(self.data["underruns"]["count"])

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2)


# ====================================================================== CPU of the bridge process


def read_cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (Linux /proc), None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def pid_listening_on(port: int) -> int | None:
    """The pid of the (same-user) process with a listening TCP socket on ``port``, if any."""
    pids = pids_listening_on(port)
    return pids[0] if pids else None


def pids_listening_on(port: int) -> list[int]:
    """Every (same-user) process holding a listening TCP socket on ``port``: one bridge, or a
    ``--workers`` supervisor and its workers (they share the socket)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as handle:
            for line in list(handle)[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                        pids.append(int(entry))
                        break
    return sorted(pids)


def read_cpu_total(pids: list[int]) -> float | None:
    """utime + stime summed over ``pids`` (None if one is unreadable)."""
    values = [read_cpu_s(pid) for pid in pids]
    return None if not values or any(v is None for v in values) else sum(values)  # type: ignore[misc]


async def find_server_pids(config: LoadConfig, http: httpx.AsyncClient) -> tuple[list[int], str]:
    if config.server_pid in (None, "", "none"):
        return [], "not measured"
    if config.server_pid != "auto":
        return [int(p) for p in str(config.server_pid).split(",")], "--server-pid"
    with contextlib.suppress(Exception):
        health = (await http.get(config.url.rstrip("/") + "/health", timeout=5)).json()
        if isinstance(health.get("pid"), int):
            return [health["pid"]], "/health"
    import urllib.parse

    port = urllib.parse.urlsplit(config.url).port or 80
    pids = await asyncio.to_thread(pids_listening_on, port)
    return pids, "listening socket" if pids else "not found"


def _generator_process(config: LoadConfig) -> tuple[list[CallResult], float, list[float]]:
    """One load generator process of ``--processes K``: its calls, its CPU, its loop lags."""
    report = asyncio.run(run_load(config))
    return report.calls, report.data["cpu"]["client_cpu_s"], report.data.get("_lags", [])


async def bridge_counters(http: httpx.AsyncClient, url: str) -> dict[str, float] | None:
    """The bridge's own Prometheus counters (underruns, errors...), for a before/after diff."""
    try:
        response = await http.get(url.rstrip("/") + "/metrics", timeout=5)
        response.raise_for_status()
        from prometheus_client.parser import text_string_to_metric_families

        counters: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    name = sample.name.removeprefix("voice_bridge_")
                    counters[f"{name}{{{labels}}}" if labels else name] = sample.value
        return counters
    except Exception:
        return None


# ====================================================================== the run


async def run_load(config: LoadConfig) -> Report:
    """Replay ``config.calls`` calls (recordings cycled) against the bridge; never raises for what
    happens to a call (that is in the report)."""
    check_loopback(config.url, config.allow_remote)
    if not config.recordings:
        config.recordings = [load_recording(p) for p in find_recordings([DEFAULT_RECORDINGS])]
    wall_started = datetime.datetime.now(datetime.UTC)
    zero = time.monotonic() if config.clock_zero is None else config.clock_zero
    deadline = zero + config.duration_s
    results: list[CallResult] = []
    active: dict[str, CallReplay] = {}
    counter = itertools.count(1)
    recordings = itertools.cycle(config.recordings)
    samples: list[dict[str, float]] = []
    lags: list[float] = []

    limits = httpx.Limits(max_connections=max(10, config.calls * 2))
    async with httpx.AsyncClient(limits=limits) as http, AgentServer() as agents:
        pids, pid_source = await find_server_pids(config, http)
        same_process = os.getpid() in pids
        counters_before = await bridge_counters(http, config.url) if config.measure_bridge else None
        cpu_before = read_cpu_total(pids)
        cpu_before_each = {pid: read_cpu_s(pid) for pid in pids}
        client_before = time.process_time()
        client_cpu_elsewhere = 0.0

        async def one_call(recording: RecordedCall) -> None:
            call_id = f"{config.call_prefix}{next(counter):04d}"
            replay = CallReplay(recording, call_id=call_id, base_url=config.url,
                                agent_server=agents, auth_token=config.auth_token,
                                public_url=config.public_url, voice=config.voice,
                                preset=config.preset, greeting=recording.greeting, clock_zero=zero,
                                tail_timeout_s=config.tail_timeout_s,
                                keep_timeline=config.keep_timelines, http=http)
            agents.register(replay)
            active[call_id] = replay
            try:
                results.append(await replay.run())
            finally:
                active.pop(call_id, None)
                agents.unregister(replay)

        async def slot(index: int) -> None:
            delay = index * config.ramp_up_s / max(1, config.calls)
            await asyncio.sleep(delay)
            while time.monotonic() < deadline:
                recording = next(recordings)
                await one_call(recording)
                remaining = deadline - time.monotonic()
                if not config.loop or remaining < recording.duration_s + 1.0:
                    return

        async def monitor() -> None:
            last_cpu, last_t = cpu_before, time.monotonic()
            tick = 0.05
            next_sample = last_t + 1.0
            next_progress = last_t
            while True:
                before = time.monotonic()
                await asyncio.sleep(tick)
                now = time.monotonic()
                lags.append((now - before - tick) * 1000)
                if now >= next_sample:
                    cpu = read_cpu_total(pids)
                    pct = (None if cpu is None or last_cpu is None
                           else round(100 * (cpu - last_cpu) / (now - last_t), 1))
                    samples.append({"t": round(now - zero, 2), "active_calls": len(active),
                                    "server_cpu_pct": pct})
                    last_cpu, last_t, next_sample = cpu, now, next_sample + 1.0
                if config.progress and now >= next_progress:
                    next_progress = now + config.progress_interval_s
                    config.progress(_progress(config, zero, results, active, len(results)))

        monitor_task = asyncio.create_task(monitor())
        if config.processes > 1:
            client_cpu_elsewhere = await _run_generators(config, zero, results, lags)
        else:
            slots = [asyncio.create_task(slot(i)) for i in range(config.calls)]
            _done, pending = await asyncio.wait(slots, timeout=max(0.0, deadline - time.monotonic()))
            for task in pending:
                task.cancel()  # a running replay hangs up and reports "cut"
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(0.2)  # let the bridge finish its side before reading its CPU
        monitor_task.cancel()
        await asyncio.gather(monitor_task, return_exceptions=True)
        if config.progress:
            config.progress(_progress(config, zero, results, active, len(results)))
        elapsed = time.monotonic() - zero
        cpu_after = read_cpu_total(pids)
        cpu_after_each = {pid: read_cpu_s(pid) for pid in pids}
        client_cpu = time.process_time() - client_before + client_cpu_elsewhere
        counters_after = await bridge_counters(http, config.url) if config.measure_bridge else None

    results.sort(key=lambda r: r.call_id)
    data = build_report(config, results, elapsed=elapsed, wall_started=wall_started)
    audio_s = sum(r.audio_s for r in results)
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    data["cpu"] = {
        "server_pid": ",".join(map(str, pids)) if len(pids) > 1 else (pids[0] if pids else None),
        "server_cpu_s_by_pid": {str(pid): round(cpu_after_each[pid] - cpu_before_each[pid], 2)
                                for pid in pids if cpu_after_each.get(pid) is not None
                                and cpu_before_each.get(pid) is not None},
        "pid_source": pid_source,
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
        "server_cpu_pct": None if server_cpu is None else round(100 * server_cpu / elapsed, 1),
        "server_cpu_s_per_audio_s": (None if server_cpu is None or not audio_s
                                     else round(server_cpu / audio_s, 4)),
        "cores": os.cpu_count(),
        "client_cpu_s": round(client_cpu, 2),
        "client_processes": config.processes,
        "same_process": same_process,
        "note": ("the bridge runs inside the load generator's process: CPU figures include both"
                 if same_process else ""),
    }
    data["client_loop_lag_ms"] = summarize(lags, 1)
    if not config.measure_bridge:  # a generator process of --processes: its lags go to the parent
        data["_lags"] = lags
    data["bridge_counters"] = (
        {k: round(counters_after.get(k, 0) - (counters_before or {}).get(k, 0), 3)
         for k in counters_after if counters_after.get(k, 0) != (counters_before or {}).get(k, 0)}
        if counters_after is not None else None)
    data["timeseries"] = _timeseries(results, samples, elapsed)
    return Report(data, results)


async def _run_generators(config: LoadConfig, zero: float, results: list[CallResult],
                         lags: list[float]) -> float:
    """``--processes K``: K generator processes (spawned, each a fresh interpreter) share the
    calls; returns their CPU seconds. The bridge is measured here, once, around all of them."""
    import concurrent.futures
    import dataclasses
    import multiprocessing

    k = config.processes
    shares = [config.calls // k + (1 if i < config.calls % k else 0) for i in range(k)]
    subs = [dataclasses.replace(config, calls=n, processes=1, call_prefix=f"p{i}c", clock_zero=zero,
                                server_pid=None, progress=None, measure_bridge=False,
                                ramp_up_s=config.ramp_up_s * n / max(1, config.calls))
            for i, n in enumerate(shares) if n > 0]
    loop = asyncio.get_running_loop()
    with concurrent.futures.ProcessPoolExecutor(
            len(subs), mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = await asyncio.gather(*(loop.run_in_executor(pool, _generator_process, sub)
                                          for sub in subs))
    cpu = 0.0
    for calls, client_cpu, sub_lags in outcomes:
        results.extend(calls)
        cpu += client_cpu
        lags.extend(sub_lags)
    return cpu


def _progress(config: LoadConfig, zero: float, results: list[CallResult],
              active: dict[str, CallReplay], finished: int) -> Progress:
    frames = sum(r.frames_received for r in results)
    underruns = sum(r.underruns for r in results)
    errors = sum(len(r.errors) for r in results)
    for replay in active.values():
        emulator = replay.emulator
        if emulator is not None:
            frames += emulator.stats.media_received
            underruns += emulator.stats.underruns
            errors += len(emulator.stats.invalid)
    return Progress(time.monotonic() - zero, config.duration_s, config.calls, finished + len(active),
                    finished, len(active), frames, underruns, errors)


def build_report(config: LoadConfig, results: list[CallResult], *, elapsed: float,
                 wall_started: datetime.datetime) -> dict[str, Any]:
    turns = [t for r in results for t in r.turns]
    errors = [e for r in results for e in r.errors]

    def kind_count(prefix: str) -> int:
        return sum(e.startswith(prefix) for e in errors)

    underrun_calls = [r for r in results if r.underruns]
    error_counts = {
        "invalid_messages": sum(r.invalid_messages for r in results),
        "unexpected_closes": kind_count("unexpected_close"),
        "timeouts": kind_count("timeout"),
        "webhook_failures": kind_count("webhook_failed"),
        "connect_failures": kind_count("connect_failed"),
        "agent_failures": kind_count("agent_"),
        "turns_without_audio": kind_count("turn_without_audio"),
        "replay_errors": kind_count("replay_error"),
    }
    error_counts["total"] = (error_counts["invalid_messages"] + len(errors)
                             - kind_count("invalid_messages"))
    return {
        "tool": "voice-bridge loadtest",
        "started_at": wall_started.isoformat(timespec="seconds"),
        "config": {"url": config.url, "calls": config.calls, "ramp_up_s": config.ramp_up_s,
                   "duration_s": config.duration_s, "loop": config.loop,
                   "signed": bool(config.auth_token), "voice": config.voice, "preset": config.preset,
                   "recordings": [r.name for r in config.recordings]},
        "elapsed_s": round(elapsed, 2),
        "calls": {
            "planned": config.calls, "run": len(results),
            "completed": sum(r.status == "completed" for r in results),
            "cut": sum(r.status == "cut" for r in results),
            "failed": sum(r.status == "failed" for r in results),
            "peak_concurrent": _peak_concurrency(results),
        },
        "turns": {
            "total": len(turns),
            "with_audio": sum(t["outcome"] == "audio" for t in turns),
            "cleared_before_audio": sum(t["outcome"] == "cleared_before_audio" for t in turns),
            "without_audio": sum(t["outcome"] == "no_audio" for t in turns),
            "overlapped": sum(bool(t["overlapped"]) for t in turns),
        },
        "ttfa_ms": summarize(t["ttfa_ms"] for t in turns if t["ttfa_ms"] is not None),
        "ttfa_greeting_ms": summarize(t["ttfa_ms"] for t in turns
                                      if t["kind"] == "greeting" and t["ttfa_ms"] is not None),
        "ttfa_agent_ms": summarize(t["ttfa_ms"] for t in turns
                                   if t["kind"] == "agent" and t["ttfa_ms"] is not None),
        "underruns": {
            "count": sum(r.underruns for r in results),
            "total_ms": round(sum(r.underrun_ms for r in results), 1),
            "calls_with_underruns": len(underrun_calls),
            "utterances_heard": sum(r.utterances_heard for r in results),
        },
        "barge_in_ms": summarize(v for r in results for v in r.barge_in_ms),
        "clears": sum(r.clears for r in results),
        "mark_rtt_ms": summarize(v for r in results for v in r.mark_rtt_ms),
        "delivery_rtf": summarize((v for r in results for v in r.delivery_rtf), 3),
        "audio_s": round(sum(r.audio_s for r in results), 1),
        "frames_received": sum(r.frames_received for r in results),
        "errors": {**error_counts, "examples": errors[:20]},
        "per_call": [r.as_dict() for r in results],
    }


def _peak_concurrency(results: list[CallResult]) -> int:
    edges = sorted([(r.started_at_s, 1) for r in results]
                   + [(r.started_at_s + r.duration_s, -1) for r in results])
    peak = current = 0
    for _, delta in edges:
        current += delta
        peak = max(peak, current)
    return peak


def _timeseries(results: list[CallResult], samples: list[dict[str, Any]],
                elapsed: float) -> dict[str, list[Any]]:
    seconds = max(1, int(elapsed) + 1)
    underrun_ms = [0.0] * seconds
    for result in results:
        for t in result.underrun_times_s:
            underrun_ms[min(seconds - 1, max(0, int(t)))] += 20.0
    return {"t_s": list(range(seconds)), "underrun_ms": underrun_ms,
            "samples": samples}


# ====================================================================== output


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def format_report(report: Report, max_calls: int = 40) -> str:
    d = report.data
    lines = []
    calls = d["calls"]
    lines.append(f"voice-bridge load test: {calls['run']} calls ({calls['completed']} completed, "
                 f"{calls['cut']} cut, {calls['failed']} failed), peak {calls['peak_concurrent']} "
                 f"concurrent, {d['elapsed_s']:.1f} s, {d['audio_s']:.1f} s of audio heard")
    lines.append("")
    header = f"{'metric':<24}{'n':>6}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}{'max':>9}"
    lines.append(header)
    lines.append("-" * len(header))
    for label, key, digits in (("TTFA all turns (ms)", "ttfa_ms", 0),
                               ("TTFA greeting (ms)", "ttfa_greeting_ms", 0),
                               ("TTFA agent turns (ms)", "ttfa_agent_ms", 0),
                               ("barge-in -> clear (ms)", "barge_in_ms", 0),
                               ("mark round trip (ms)", "mark_rtt_ms", 0),
                               ("delivery RTF", "delivery_rtf", 3)):
        s = d[key]
        lines.append(f"{label:<24}{s['n']:>6}" + "".join(
            f"{_fmt(s[p], digits):>9}" for p in ("p50", "p90", "p95", "p99", "max")))
    lines.append("")
    u = d["underruns"]
    lines.append(f"underruns: {u['count']} ({u['total_ms']:.0f} ms of silence inside utterances) in "
                 f"{u['calls_with_underruns']} of {calls['run']} calls; clears: {d['clears']}")
    counters = d.get("bridge_counters")
    if counters is not None:
        bridge_errors = sum(v for k, v in counters.items() if k.startswith("errors_total"))
        lines.append(f"  the bridge's own count: {counters.get('underruns_total', 0):.0f} underruns "
                     f"({1000 * counters.get('underrun_seconds_total', 0):.0f} ms), "
                     f"{counters.get('barge_ins_total', 0):.0f} barge-ins, "
                     f"{bridge_errors:.0f} errors")
    t = d["turns"]
    lines.append(f"turns: {t['total']} ({t['with_audio']} with audio, {t['cleared_before_audio']} "
                 f"cleared before audio, {t['without_audio']} without audio, {t['overlapped']} sent "
                 "while the bridge was still speaking)")
    cpu = d.get("cpu", {})
    if cpu.get("server_cpu_s") is not None:
        lines.append(f"server CPU: {cpu['server_cpu_s']:.1f} s = {cpu['server_cpu_pct']:.0f}% of one "
                     f"core on average ({cpu['cores']} cores; pid {cpu['server_pid']} via "
                     f"{cpu['pid_source']}); {_fmt(cpu['server_cpu_s_per_audio_s'], 4)} CPU s per "
                     f"audio s; load generator {cpu['client_cpu_s']:.1f} CPU s"
                     + (" (same process)" if cpu.get("same_process") else ""))
    else:
        lines.append(f"server CPU: not measured ({cpu.get('pid_source', '-')}); load generator "
                     f"{cpu.get('client_cpu_s', 0):.1f} CPU s")
    lag = d.get("client_loop_lag_ms") or {}
    if lag.get("n"):
        lines.append(f"load generator event-loop lag: p99 {lag['p99']:.0f} ms, max {lag['max']:.0f} ms"
                     + ("  (high: the client itself may cause underruns)" if lag["p99"] > 20 else ""))
    e = d["errors"]
    lines.append("errors: " + (", ".join(f"{k}={v}" for k, v in e.items()
                                         if k not in ("examples", "total") and v)
                               or "none") + f" (total {e['total']})")
    for example in e["examples"][:5]:
        lines.append(f"  ! {example}")
    lines.append("")
    per_call = d["per_call"]
    if per_call:
        lines.append(f"{'call':<10}{'recording':<16}{'status':<10}{'turns':>6}{'ttfa p50':>9}"
                     f"{'ttfa max':>9}{'underr':>7}{'ms':>6}{'barge':>7}{'close':>7}{'errors':>7}")
        shown = per_call
        if len(per_call) > max_calls:
            def badness(c: dict[str, Any]) -> tuple[int, float, float]:
                worst = max([x["ttfa_ms"] or 0 for x in c["turns"]] or [0])
                return -len(c["errors"]), -c["underrun_ms"], -worst

            shown = sorted(per_call, key=badness)
            shown = sorted(shown[:max_calls], key=lambda c: c["call_id"])
            lines.append(f"(the {max_calls} worst of {len(per_call)} calls)")
        for c in shown:
            ttfas = [x["ttfa_ms"] for x in c["turns"] if x["ttfa_ms"] is not None]
            ttfas.sort()
            p50 = ttfas[len(ttfas) // 2] if ttfas else None
            barge = c["barge_in_ms"][0] if c["barge_in_ms"] else None
            worst = max(ttfas) if ttfas else None
            lines.append(f"{c['call_id']:<10}{c['recording'][:15]:<16}{c['status']:<10}"
                         f"{len(c['turns']):>6}{_fmt(p50, 0):>9}{_fmt(worst, 0):>9}"
                         f"{c['underruns']:>7}{c['underrun_ms']:>6.0f}{_fmt(barge, 0):>7}"
                         f"{_fmt(c['close_code']):>7}{len(c['errors']):>7}")
    return "\n".join(lines)


def write_plot(report: Report, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    d = report.data
    ttfa = np.array([t["ttfa_ms"] for c in d["per_call"] for t in c["turns"]
                     if t["ttfa_ms"] is not None])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    fig.suptitle(f"voice-bridge load test: {d['calls']['run']} calls, peak "
                 f"{d['calls']['peak_concurrent']} concurrent, {d['underruns']['count']} underruns")
    ax = axes[0][0]
    if ttfa.size:
        ax.hist(ttfa, bins=min(40, max(5, ttfa.size // 2)), color="tab:blue")
        for p, style in ((50, "-"), (95, "--"), (99, ":")):
            ax.axvline(np.percentile(ttfa, p), color="k", linestyle=style, label=f"p{p}")
        ax.legend()
    ax.set_title("time to first audio per turn")
    ax.set_xlabel("ms")
    ax.set_ylabel("turns")
    ax = axes[0][1]
    if ttfa.size:
        xs = np.sort(ttfa)
        ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, drawstyle="steps-post")
    ax.set_title("TTFA CDF")
    ax.set_xlabel("ms")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ts = d["timeseries"]
    ax = axes[1][0]
    ax.bar(ts["t_s"], ts["underrun_ms"], width=1.0, color="tab:red", label="underrun ms")
    ax.set_ylim(0, max(100.0, max(ts["underrun_ms"] or [0]) * 1.1))
    ax.set_title("underruns over time (bars) and active calls (line)")
    ax.set_xlabel("s since start")
    ax.set_ylabel("ms of silence inside utterances")
    samples = ts["samples"]
    if samples:
        twin = ax.twinx()
        twin.plot([s["t"] for s in samples], [s["active_calls"] for s in samples], color="tab:gray",
                  label="active calls")
        twin.set_ylabel("active calls")
    ax = axes[1][1]
    cpu = [(s["t"], s["server_cpu_pct"]) for s in samples if s.get("server_cpu_pct") is not None]
    if cpu:
        ax.plot([c[0] for c in cpu], [c[1] for c in cpu], color="tab:green")
        ax.axhline(100 * (d.get("cpu", {}).get("cores") or 1), color="k", linestyle=":",
                   label="all cores")
        ax.legend()
    ax.set_title("bridge CPU (% of one core)")
    ax.set_xlabel("s since start")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def progress_line(p: Progress) -> str:
    width = 24
    done = min(width, int(width * p.elapsed_s / max(1e-9, p.duration_s)))
    calls = min(width, int(width * p.finished / max(1, p.planned)))
    bar = "#" * calls + "-" * max(0, done - calls) + " " * (width - max(done, calls))
    return (f"\r[{bar}] {p.elapsed_s:6.1f}/{p.duration_s:.0f} s  calls {p.finished}/{p.planned} done, "
            f"{p.active} active  frames {p.frames}  underruns {p.underruns}  errors {p.errors}   ")


# ====================================================================== CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadtest.py", description=__doc__.split("\n\n")[0],
        epilog="Recordings: files or directories of *.jsonl (default tests/data/calls).",
    )
    parser.add_argument("recordings", nargs="*", help="recorded calls (files or directories)")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the bridge's base URL")
    parser.add_argument("--calls", type=int, default=4, help="concurrent calls (default 4)")
    parser.add_argument("--ramp-up", type=float, default=0.0, help="seconds to start them all over")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="wall-clock cap in seconds for the whole run (default 120)")
    parser.add_argument("--loop", action="store_true",
                        help="start another call when one ends, until --duration")
    parser.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"),
                        help="sign webhooks with it (default $TWILIO_AUTH_TOKEN; unset: unsigned, "
                             "for a bridge started with --insecure-dev)")
    parser.add_argument("--public-url", default=None, help="the bridge's PUBLIC_URL, if it has one")
    parser.add_argument("--voice", default=None, help="voice parameter (default: the bridge's)")
    parser.add_argument("--preset", default=None, help="preset parameter (default: the bridge's)")
    parser.add_argument("--server-pid", default="auto",
                        help="pid of the bridge for CPU figures: a number, auto (default), none")
    parser.add_argument("--tail-timeout", type=float, default=10.0,
                        help="seconds to wait past a recording's end for the bridge to finish")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    parser.add_argument("--json", dest="json_out", type=Path, help="write the full report here")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here (matplotlib)")
    parser.add_argument("--timelines", action="store_true", help="per-call event timelines in --json")
    parser.add_argument("--fail-on-underrun", action="store_true", help="exit 3 if any underrun")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--processes", type=int, default=1,
                        help="load generator processes, the calls split between them (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.calls < 1 or args.duration <= 0 or args.ramp_up < 0 or args.processes < 1:
        print("loadtest: --calls and --processes must be >= 1, --duration > 0, --ramp-up >= 0",
              file=sys.stderr)
        return 2
    try:
        check_loopback(args.url, args.allow_remote)
        paths = find_recordings(args.recordings or [DEFAULT_RECORDINGS])
        recordings = [load_recording(p) for p in paths]
    except (FileNotFoundError, ValueError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    show = not args.quiet

    def progress(p: Progress) -> None:
        sys.stderr.write(progress_line(p))
        sys.stderr.flush()

    config = LoadConfig(
        url=args.url, recordings=recordings, calls=args.calls, ramp_up_s=args.ramp_up,
        duration_s=args.duration, loop=args.loop, auth_token=args.auth_token or None,
        public_url=args.public_url, voice=args.voice, preset=args.preset,
        server_pid=args.server_pid, tail_timeout_s=args.tail_timeout,
        allow_remote=args.allow_remote, keep_timelines=args.timelines,
        progress=progress if show else None, processes=args.processes,
    )
    report = asyncio.run(run_load(config))
    if show:
        sys.stderr.write("\n")
    print(format_report(report))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(report.to_json() + "\n")
        print(f"\nreport: {args.json_out}")
    if args.plot:
        write_plot(report, args.plot)
        print(f"plot: {args.plot}")
    if not report.ok:
        return 1
    if args.fail_on_underrun and report.underruns > 0:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
