"""Prometheus metrics, one registry per app (so tests and several apps in one process never clash)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("voice_bridge_active_calls", "Calls with an open media stream",
                                  registry=r)
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
        self.registry.register(_ServerCollector(snapshot, prefix))

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
