"""Frames sent are counted locally and reach the Prometheus counter in batches (telephony/metrics.py
``count_frames_sent``): /metrics must still show every frame, within ``FLUSH_S``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import telephony.metrics as metrics_module
from telephony.metrics import FLUSH_S, Metrics
from telephony.testing.bridge_harness import running_bridge
from tests.conftest import eventually
from tests.test_call_e2e import open_call


def frames_sent(text: bytes) -> float:
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "voice_bridge_frames_sent_total":
                return sample.value
    raise AssertionError("no voice_bridge_frames_sent_total")


def test_frames_counted_between_flushes_are_all_in_the_rendered_metrics(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(metrics_module.time, "monotonic", lambda: now[0])
    metrics = Metrics()
    metrics.count_frames_sent(1)  # the first count flushes: FLUSH_S from here on
    for _ in range(49):
        metrics.count_frames_sent(1)
    assert metrics.frames_sent._value.get() == 1  # batched: not one inc per tick
    now[0] += FLUSH_S
    metrics.count_frames_sent(2)  # a second on: the batch goes in
    assert metrics.frames_sent._value.get() == 52
    metrics.count_frames_sent(3)
    assert frames_sent(metrics.render()) == 55  # rendering flushes what is still counted here


def test_another_worker_sees_every_frame_once_flushed(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Under --workers another worker renders from the counter's files: what ``flush`` (called at
    each call's end) has moved there is what it sees (pid faked as in tests/test_workers.py)."""
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    pid = {"now": 201}
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid["now"]))
    worker = Metrics()
    worker.count_frames_sent(1)
    worker.count_frames_sent(4)
    pid["now"] = 202
    other = Metrics()
    assert frames_sent(other.render()) == 1  # the batch is still in the first worker
    pid["now"] = 201
    worker.flush()
    pid["now"] = 202
    assert frames_sent(other.render()) == 5


async def test_a_call_that_ends_leaves_all_its_frames_in_the_counter() -> None:
    """The call's end flushes: the counter itself (what other workers read) holds every frame the
    caller received, with no /metrics render in between."""
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA61", "?greeting=Hi%20there.")
        assert await call.wait_for(lambda: call.played_utterances(), timeout=10)
        await call.hang_up()
        await eventually(lambda: not rb.bridge.calls, what="the call ended")
        assert rb.bridge.metrics.frames_sent._value.get() == call.stats.media_received > 0
