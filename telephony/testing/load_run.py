"""The load test's run: ``config.calls`` recorded calls replayed at once against a bridge (each a
``CallReplay``), while the bridge's CPU and counters and the generator's own event-loop lag are
measured; ``--processes K`` splits the calls over K generator processes. scripts/loadtest.py is its
command line; load_report.py turns the results into the report."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from telephony.recorded_call import RecordedCall, find_recordings, load_recording
from telephony.testing.lean_replay import LeanReplay, SharedTicker
from telephony.testing.load_report import build_report, timeseries
from telephony.testing.proc_stats import pids_listening_on, read_cpu_s, read_cpu_total
from telephony.testing.replay import CallReplay, check_loopback
from telephony.testing.replay_agent import AgentServer
from telephony.testing.replay_result import CallResult, summarize

DEFAULT_RECORDINGS = Path(__file__).resolve().parents[2] / "tests" / "data" / "calls"
"""The committed fixture calls (a source checkout's; the package is installed editable)."""


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
    lean: bool = False
    """The lean generator (lean_replay.py: one shared 20 ms ticker, raw sockets, counters for the
    playback) instead of one ``TwilioEmulator`` per call: the same report, a fraction of the CPU."""
    ticker_phases: int = 4
    """Lean generator: the calls are spread over this many phases of the 20 ms period (1: every
    call's messages go out in one burst per 20 ms: ~10% less generator CPU, burstier for the bridge,
    and the generator's reads wait for the whole tick)."""


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


def run_loop(config: LoadConfig) -> Report:
    """``run_load`` in a fresh event loop: uvloop's for the lean generator when it is installed
    (its transports cost less per message), asyncio's own otherwise (as the emulator always ran)."""
    if config.lean:
        with contextlib.suppress(ImportError):
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(run_load(config))
    return asyncio.run(run_load(config))


def _generator_process(config: LoadConfig) -> tuple[list[CallResult], float, list[float]]:
    """One load generator process of ``--processes K``: its calls, its CPU, its loop lags."""
    report = run_loop(config)
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
    ticker = SharedTicker(config.ticker_phases)
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
            kind = partial(LeanReplay, ticker=ticker) if config.lean else CallReplay
            replay = kind(recording, call_id=call_id, base_url=config.url,
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
        if config.lean:
            ticker.start()
        if config.processes > 1:
            client_cpu_elsewhere = await _run_generators(config, zero, results, lags)
        else:
            slots = [asyncio.create_task(slot(i)) for i in range(config.calls)]
            _done, pending = await asyncio.wait(slots, timeout=max(0.0, deadline - time.monotonic()))
            for task in pending:
                task.cancel()  # a running replay hangs up and reports "cut"
            await asyncio.gather(*pending, return_exceptions=True)
        ticker.stop()
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
    call_s = sum(r.duration_s for r in results)
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
        "client_cpu_ms_per_call_s": (round(1000 * client_cpu / call_s, 3) if call_s else None),
        "generator": "lean" if config.lean else "emulator",
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
    data["timeseries"] = timeseries(results, samples, elapsed)
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
