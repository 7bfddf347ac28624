"""Prometheus metrics, one registry per app (so tests and several apps in one process never clash).

Under ``--workers`` (telephony/workers.py) every worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and ``/metrics``, whichever
worker answers, renders the sum over all of them: counters and histograms add up (a restarted
worker's counts stay in), gauges are ``livesum`` (only live workers count). A remote fleet's
per-server state is read from the engine at scrape time in one process, so in multiprocess mode each
worker publishes it into multiprocess metrics every ``PUBLISH_S`` (and the answering worker just
before rendering): in-flight requests and request/failure counts add up, ``up`` is the minimum over
workers (0 when any worker has the server in back-off), first-byte quantiles are the maximum (the
slowest worker's view: quantiles do not add up).
"""

from __future__ import annotations

import asyncio
import glob
import os
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

PUBLISH_S = 5.0
"""Multiprocess mode: how often each worker publishes its remote fleets' state."""

FLUSH_S = 1.0
"""Frames sent are counted in a plain int and added to the Prometheus counter at most this long
apart (and whenever this process renders /metrics, and at each call's end): see ``count_frames_sent``."""


def multiprocess_dir() -> str | None:
    """The shared metrics directory when this process is one of several workers."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        self._custom = CollectorRegistry()
        """Collectors read at scrape time, in this process only (single-process mode)."""
        self._fleets: list[_FleetPublisher] = []
        r = self.registry
        self.active_calls = Gauge("voice_bridge_active_calls", "Calls with an open media stream",
                                  registry=r, multiprocess_mode="livesum")
        self.workers = Gauge("voice_bridge_workers", "Bridge processes serving (live workers)",
                             registry=r, multiprocess_mode="livesum")
        self.workers.set(1)
        self.calls_total = Counter("voice_bridge_calls_total", "Media streams accepted", registry=r)
        self.ttfa = Histogram(
            "voice_bridge_time_to_first_audio_seconds",
            "From an utterance's submission (agent's first token) to its first frame sent",
            ["source"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.engine_first_chunk = Histogram(
            "voice_bridge_engine_first_chunk_seconds", "Engine time to first audio chunk of a segment",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.frames_sent = Counter("voice_bridge_frames_sent_total", "20 ms μ-law frames sent",
                                   registry=r)
        self._frames_unflushed = 0
        self._flush_at = 0.0
        self.underruns = Counter("voice_bridge_underruns_total",
                                 "Gaps inside an utterance when Twilio's buffer ran dry", registry=r)
        self.underrun_seconds = Counter("voice_bridge_underrun_seconds_total",
                                        "Silence heard inside utterances", registry=r)
        self.barge_ins = Counter("voice_bridge_barge_ins_total", "Caller interruptions honoured",
                                 registry=r)
        self.errors = Counter("voice_bridge_errors_total", "Errors by kind", ["kind"], registry=r)
        self.webhook_seconds = Histogram("voice_bridge_webhook_seconds", "TwiML webhook handling time",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.caller_turns = Counter("voice_bridge_caller_turns_total",
                                    "Caller turns recognised, by outcome (prompt, empty, failed)",
                                    ["outcome"], registry=r)
        self.stt_decode = Histogram("voice_bridge_stt_decode_seconds",
                                    "Recogniser time per decode (final, speculative or partial)",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.stt_final_delay = Histogram(
            "voice_bridge_stt_final_delay_seconds",
            "From the caller's last speech frame to the final text handed to the agent",
            buckets=LATENCY_BUCKETS, registry=r,
        )

    def watch_servers(self, snapshot: Callable[[], list[dict[str, object]]],
                      prefix: str = "voice_bridge_engine_server") -> None:
        """Export a remote fleet's per-server state, read at scrape time (nothing on the hot path):
        the engine's TTS servers, or (``prefix="voice_bridge_stt_server"``) the recogniser's."""
        if self.multiprocess_dir is None:
            self._custom.register(_ServerCollector(snapshot, prefix))
        else:
            self._fleets.append(_FleetPublisher(snapshot, prefix, self.registry))

    def count_frames_sent(self, frames: int) -> None:
        """``frames_sent`` for the outbound hot path: every call adds to it on every 20 ms tick, and
        a Prometheus ``inc`` (a lock; under --workers a write to a shared file) per call per tick
        was a visible part of a busy bridge's CPU. The count is kept here and added to the counter
        once ``FLUSH_S`` has passed, and whenever /metrics is rendered here or a call ends."""
        self._frames_unflushed += frames
        if time.monotonic() >= self._flush_at:
            self.flush()

    def flush(self) -> None:
        """Move the locally counted frames into the Prometheus counter."""
        if self._frames_unflushed:
            self.frames_sent.inc(self._frames_unflushed)
            self._frames_unflushed = 0
        self._flush_at = time.monotonic() + FLUSH_S

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        self.flush()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry) + generate_latest(self._custom)
        self.publish()
        return self._render_all_workers()

    async def render_async(self) -> bytes:
        """``render`` for the endpoint: under ``--workers`` every worker's files are read in a
        thread, off the event loop (the fleet state is published first, on it)."""
        if self.multiprocess_dir is None:
            return self.render()
        self.flush()
        self.publish()
        return await asyncio.to_thread(self._render_all_workers)

    def _render_all_workers(self) -> bytes:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)

    def publish(self) -> None:
        """Multiprocess mode: write this worker's remote fleet state where the others read it."""
        for fleet in self._fleets:
            fleet.publish()

    async def publish_forever(self) -> None:
        """Multiprocess mode, while the worker serves: ``publish`` every ``PUBLISH_S``."""
        while self._fleets:
            self.publish()
            await asyncio.sleep(PUBLISH_S)

    def totals(self) -> dict[str, int] | None:
        """Multiprocess mode: active calls and live workers over every worker (None otherwise);
        reads a few small files, so call it off the event loop."""
        if self.multiprocess_dir is None:
            return None
        files = glob.glob(os.path.join(self.multiprocess_dir, "gauge_livesum_*.db"))
        totals = {"active_calls": 0, "workers": 0}
        for metric in MultiProcessCollector(None, path=self.multiprocess_dir).merge(files):
            key = metric.name.removeprefix("voice_bridge_")
            if key in totals:
                totals[key] = int(sum(sample.value for sample in metric.samples))
        return totals


class _FleetPublisher:
    """A remote fleet's per-server state as multiprocess metrics (see the module docstring)."""

    def __init__(self, snapshot: Callable[[], list[dict[str, object]]], prefix: str,
                 registry: CollectorRegistry) -> None:
        self._snapshot = snapshot
        labels = ["server"]
        self.in_flight = Gauge(f"{prefix}_in_flight", "Requests in flight on the server (all workers)",
                               labels, registry=registry, multiprocess_mode="livesum")
        self.up = Gauge(f"{prefix}_up", "1 while no worker has the server in back-off", labels,
                        registry=registry, multiprocess_mode="livemin")
        self.requests = Counter(f"{prefix}_requests", "Requests sent", labels, registry=registry)
        self.failures = Counter(f"{prefix}_failures", "Server failures", labels, registry=registry)
        self.first_byte = Gauge(f"{prefix}_first_byte_seconds",
                                "Request to first byte, recent quantiles (the slowest worker's)",
                                ["server", "quantile"], registry=registry, multiprocess_mode="livemax")
        self._counted: dict[tuple[str, str], float] = {}

    def _count(self, counter: Counter, kind: str, url: str, value: float) -> None:
        last = self._counted.get((kind, url), 0.0)
        if value > last:
            counter.labels(server=url).inc(value - last)
        self._counted[(kind, url)] = value

    def publish(self) -> None:
        for server in self._snapshot():
            url = str(server["url"])
            self.in_flight.labels(server=url).set(float(server["in_flight"]))  # type: ignore[arg-type]
            self.up.labels(server=url).set(0.0 if server["state"] == "backoff" else 1.0)
            self._count(self.requests, "requests", url, float(server["requests"]))  # type: ignore[arg-type]
            self._count(self.failures, "failures", url, float(server["failures"]))  # type: ignore[arg-type]
            for quantile, key in (("0.5", "first_byte_ms_p50"), ("0.95", "first_byte_ms_p95")):
                value = server[key]
                if value is not None:
                    self.first_byte.labels(server=url, quantile=quantile).set(
                        float(value) / 1000)  # type: ignore[arg-type]


class _ServerCollector(Collector):
    """``<prefix>_*{server}`` from a fleet snapshot (for a recogniser's fleet, "first byte" is the
    whole transcript: it arrives in one piece)."""

    def __init__(self, snapshot: Callable[[], list[dict[str, object]]], prefix: str) -> None:
        self._snapshot = snapshot
        self._prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        prefix = self._prefix
        in_flight = GaugeMetricFamily(f"{prefix}_in_flight", "Requests in flight on the server",
                                      labels=["server"])
        up = GaugeMetricFamily(f"{prefix}_up", "1 while the server takes requests, 0 in back-off",
                               labels=["server"])
        requests = CounterMetricFamily(f"{prefix}_requests", "Requests sent", labels=["server"])
        failures = CounterMetricFamily(f"{prefix}_failures", "Server failures", labels=["server"])
        first_byte = GaugeMetricFamily(f"{prefix}_first_byte_seconds",
                                       "Request to first byte (of a transcript: all of it), recent quantiles",
                                       labels=["server", "quantile"])
        for server in self._snapshot():
            url = str(server["url"])
            in_flight.add_metric([url], float(server["in_flight"]))  # type: ignore[arg-type]
            up.add_metric([url], 0.0 if server["state"] == "backoff" else 1.0)
            requests.add_metric([url], float(server["requests"]))  # type: ignore[arg-type]
            failures.add_metric([url], float(server["failures"]))  # type: ignore[arg-type]
            for quantile, key in (("0.5", "first_byte_ms_p50"), ("0.95", "first_byte_ms_p95")):
                value = server[key]
                if value is not None:
                    first_byte.add_metric([url, quantile], float(value) / 1000)  # type: ignore[arg-type]
        yield from (in_flight, up, requests, failures, first_byte)
