"""Prometheus metrics, one registry per app (so tests and several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
