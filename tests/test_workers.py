"""Issue 11, item 1: ``voice-bridge serve --workers N``, N processes on one port (telephony/workers.py).

Real processes throughout (telephony/testing/bridge_process.py): a webhook answered by one bridge
and its stream opened on another; then ``--workers 2`` itself, from /health to the drain.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telephony.drain import STREAM_ARRIVAL_S
from telephony.testing.bridge_process import bridge_process, free_port
from telephony.testing.twilio_emulator import TwilioEmulator
from tests.test_call_e2e import twiml_parameters
from tests.test_drain import TOKEN, signed_webhook

ENGINE = {"VOICE_BRIDGE_ENGINE": "synthetic", "VOICE_BRIDGE_STT": "off",
          "VOICE_BRIDGE_LOG_LEVEL": "info"}


def signed_env(port: int) -> dict[str, str]:
    return {**ENGINE, "TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_URL": f"http://127.0.0.1:{port}"}


async def stream_to(response: httpx.Response, call_sid: str, port: int) -> TwilioEmulator:
    """Open the stream the webhook answered with, on ``port`` (another process's, maybe)."""
    assert response.status_code == 200, response.text
    url, params = twiml_parameters(response.text)
    url = url.replace(url.split("/")[2], f"127.0.0.1:{port}")
    call = TwilioEmulator(url, call_sid=call_sid, stream_sid="MZ" + call_sid[2:], custom_parameters=params)
    await call.connect()
    return call


def metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
async def test_a_webhook_answered_by_one_process_streams_on_another() -> None:
    """Nothing but configuration is shared: the stream token one process issued verifies in the
    other, and the call plays there (the first process never sees it)."""
    port_a, port_b = free_port(), free_port()
    async with bridge_process(env=signed_env(port_a), port=port_a) as a, \
            bridge_process(env=signed_env(port_b), port=port_b) as b, \
            httpx.AsyncClient(timeout=5) as client:
        answered = await signed_webhook(client, a.base_url, "CA41")
        call = await stream_to(answered, "CA41", b.port)
        assert await call.wait_for(lambda: call.stats.media_received > 0, 10), b.log()[-2000:]
        health_a, health_b = [(await client.get(f"{p.base_url}/health")).json() for p in (a, b)]
        assert health_a["active_calls"] == 0 and health_b["active_calls"] == 1
        await call.send_dtmf("#")
        assert await call.wait_closed(15)
        assert call.stats.close_code == 1000, call.stats.close_reason
        assert any(u.outcome == "played" for u in call.stats.utterances)


async def workers_answering(client: httpx.AsyncClient, base: str, want: int,
                            tries: int = 400) -> dict[int, dict]:
    """/health bodies by pid, asked until ``want`` different pids answered (at most ``tries``)."""
    seen: dict[int, dict] = {}
    for _ in range(tries):
        body = (await client.get(f"{base}/health")).json()
        if "process" not in body:  # not a worker's /health: a refusal while one restarts
            continue
        seen[body["process"]["pid"]] = body
        if len(seen) >= want:
            break
    return seen


@pytest.mark.slow
async def test_two_workers_share_the_port_calls_metrics_and_drain() -> None:
    port = free_port()
    async with bridge_process("--workers", "2", env=signed_env(port), port=port) as proc, \
            httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        base = proc.base_url
        answering = await workers_answering(client, base, 2)
        assert len(answering) == 2, answering
        assert sorted(b["process"]["worker"] for b in answering.values()) == [0, 1]
        assert all(b["process"]["workers"] == 2 for b in answering.values())
        assert proc.process.pid not in answering  # the supervisor serves nothing itself

        # Calls until both workers carry at least one (the kernel picks; bounded).
        calls: list[TwilioEmulator] = []
        per_worker: dict[int, int] = {}
        for n in range(12):
            sid = f"CA{50 + n}"
            call = await stream_to(await signed_webhook(client, base, sid), sid, port)
            calls.append(call)
            assert await call.wait_for(lambda c=call: c.stats.media_received > 0, 10), proc.log()[-3000:]
            answering = await workers_answering(client, base, 2)
            per_worker = {pid: body["active_calls"] for pid, body in answering.items()}
            if len(per_worker) == 2 and all(per_worker.values()):
                break
        assert len(per_worker) == 2 and all(per_worker.values()), per_worker
        assert sum(per_worker.values()) == len(calls)
        health = (await client.get(f"{base}/health")).json()
        assert health["total"] == {"active_calls": len(calls), "workers": 2}

        text = (await client.get(f"{base}/metrics")).text  # one worker answers for all
        assert metric(text, "voice_bridge_calls_total") == len(calls)
        assert metric(text, "voice_bridge_active_calls") == len(calls)
        assert metric(text, "voice_bridge_workers") == 2

        proc.process.send_signal(signal.SIGTERM)
        for call in calls:  # the calls play on through the drain; the callers end them
            assert await call.wait_for(
                lambda c=call: any(u.outcome == "played" for u in c.stats.utterances), 20)
            assert call.stats.close_code is None
            await call.send_dtmf("#")
        for call in calls:
            assert await call.wait_closed(15)
            assert call.stats.close_code == 1000, call.stats.close_reason
        started = time.monotonic()
        # A worker whose answered webhook's stream went to the other worker waits for it up to
        # STREAM_ARRIVAL_S (telephony/drain.py); then every worker has drained.
        returncode = await asyncio.to_thread(proc.process.wait, STREAM_ARRIVAL_S + 15)
        assert returncode == 0, proc.log()[-3000:]
        assert time.monotonic() - started < STREAM_ARRIVAL_S + 10
        log = proc.log()
        assert "SIGTERM: every worker drains" in log
        assert log.count("drain: every call ended") == 2
        assert "every worker has exited; supervisor done" in log


@pytest.mark.slow
async def test_a_worker_that_dies_is_restarted() -> None:
    async with bridge_process("--workers", "2", "--insecure-dev", env=ENGINE) as proc, \
            httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        answering = await workers_answering(client, proc.base_url, 2)
        assert len(answering) == 2
        victim = next(iter(answering))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20  # restarted after RESTART_BACKOFF_S[1] (1 s)
        while time.monotonic() < deadline:
            answering = await workers_answering(client, proc.base_url, 2, tries=20)
            if len(answering) == 2 and victim not in answering:
                break
        assert len(answering) == 2 and victim not in answering, proc.log()[-3000:]
        assert "restarting in" in proc.log()
        assert {b["total"]["workers"] for b in answering.values()} == {2}  # the dead one no longer counts


@pytest.mark.slow
async def test_a_worker_that_cannot_start_fails_the_start() -> None:
    env = {**os.environ, **ENGINE, "VOICE_BRIDGE_ENGINE": "piper",
           "VOICE_BRIDGE_DEFAULT_VOICE": "no-such-voice"}
    command = [sys.executable, "-m", "telephony", "serve", "--host", "127.0.0.1", "--port",
               str(free_port()), "--workers", "2", "--insecure-dev"]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True,
                                   timeout=90)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "before the bridge started; stopping" in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
async def test_the_load_test_drives_two_workers_from_two_generator_processes() -> None:
    """scripts/loadtest.py against ``--workers 2``: the calls come from two generator processes,
    the bridge's CPU is every process holding the port, its counters add up over the workers."""
    from telephony.recorded_call import load_recording
    from telephony.testing.load_run import DEFAULT_RECORDINGS, LoadConfig, run_load

    async with bridge_process("--workers", "2", "--insecure-dev", env=ENGINE) as proc:
        recording = load_recording(DEFAULT_RECORDINGS / "ivr_prompts.jsonl")
        config = LoadConfig(url=proc.base_url, recordings=[recording], calls=4,
                            ramp_up_s=0.5, duration_s=60, processes=2)
        report = await run_load(config)
    data = report.data
    assert data["calls"]["completed"] == 4 and report.ok, data["errors"]
    assert sorted(c["call_id"] for c in data["per_call"]) == ["p0c0001", "p0c0002", "p1c0001",
                                                               "p1c0002"]
    assert data["cpu"]["client_processes"] == 2
    by_pid = data["cpu"]["server_cpu_s_by_pid"]
    assert len(by_pid) == 3 and str(proc.process.pid) in by_pid  # the supervisor and two workers
    assert data["cpu"]["server_cpu_s"] == pytest.approx(sum(by_pid.values()), abs=0.02)
    assert data["bridge_counters"]["calls_total"] == 4  # /metrics: both workers' calls


@pytest.mark.slow
async def test_two_workers_serve_the_lean_stream_port_too() -> None:
    """With ``--stream-port`` (the lean picows listener, telephony/twilio/picows_socket.py) the supervisor
    binds that port once as well and both workers accept streams on it: calls opened there land
    on both."""
    port, stream_port = free_port(), free_port()
    async with bridge_process("--workers", "2", "--insecure-dev", "--stream-port", str(stream_port),
                              env=ENGINE, port=port) as proc, \
            httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        calls: list[TwilioEmulator] = []
        per_worker: dict[int, int] = {}
        for n in range(12):
            sid = f"CA{70 + n}"
            answered = await client.post(f"{proc.base_url}/twiml", data={"CallSid": sid})
            call = await stream_to(answered, sid, stream_port)
            calls.append(call)
            assert await call.wait_for(lambda c=call: c.stats.media_received > 0, 10), proc.log()[-3000:]
            answering = await workers_answering(client, proc.base_url, 2)
            per_worker = {pid: body["active_calls"] for pid, body in answering.items()}
            if len(per_worker) == 2 and all(per_worker.values()):
                break
        assert len(per_worker) == 2 and all(per_worker.values()), per_worker
        for call in calls:
            await call.close()


def server_state(url: str, *, in_flight: int, requests: int, failures: int, state: str,
                 p95_ms: float) -> dict[str, object]:
    return {"url": url, "in_flight": in_flight, "requests": requests, "failures": failures,
            "state": state, "first_byte_ms_p50": p95_ms / 2, "first_byte_ms_p95": p95_ms}


def test_multiprocess_metrics_add_up_calls_and_remote_fleets(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers' Metrics in one test process (prometheus-client's multiprocess values, the pid
    faked): counters and live gauges add up, a fleet's ``up`` is the minimum and its p95 the
    maximum over workers, and a dead worker's live gauges leave the totals."""
    from prometheus_client import multiprocess, values

    from telephony.metrics import Metrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    pid = {"now": 101}
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid["now"]))
    url = "http://tts-1/v1"
    first = Metrics()
    first.watch_servers(lambda: [server_state(url, in_flight=2, requests=10, failures=1,
                                              state="ok", p95_ms=300)])
    first.calls_total.inc(3)
    first.active_calls.inc(2)
    first.publish()
    pid["now"] = 102
    second = Metrics()
    fleet = [server_state(url, in_flight=1, requests=5, failures=0, state="backoff", p95_ms=900)]
    second.watch_servers(lambda: fleet)
    second.calls_total.inc(4)
    second.active_calls.inc(1)
    second.publish()
    fleet[0] = server_state(url, in_flight=1, requests=7, failures=0, state="backoff", p95_ms=900)

    text = second.render().decode()  # publishes the second worker's fleet again: +2 requests
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name: str, **labels: str) -> float:
        family = families[name.removesuffix("_total")]
        return next(s.value for s in family.samples if s.name == name and s.labels == labels)

    assert value("voice_bridge_calls_total") == 7
    assert value("voice_bridge_active_calls") == 3
    assert value("voice_bridge_workers") == 2
    assert value("voice_bridge_engine_server_in_flight", server=url) == 3
    assert value("voice_bridge_engine_server_requests_total", server=url) == 17
    assert value("voice_bridge_engine_server_failures_total", server=url) == 1
    assert value("voice_bridge_engine_server_up", server=url) == 0
    assert value("voice_bridge_engine_server_first_byte_seconds", server=url, quantile="0.95") == 0.9
    assert second.totals() == {"active_calls": 3, "workers": 2}
    multiprocess.mark_process_dead(101, str(tmp_path))
    assert second.totals() == {"active_calls": 1, "workers": 1}


def test_default_workers_one_per_usable_core_and_one_for_local_or_gpu_work() -> None:
    from telephony.workers import default_workers

    assert default_workers(False) == len(os.sched_getaffinity(0))
    assert default_workers(True) == 1  # --insecure-dev
    assert default_workers(False, "chatterbox") == 1  # one GPU model copy, not one per core
