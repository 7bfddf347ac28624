"""Choosing among remote servers: fewest in flight, back-off with probes (injected clock)."""

from __future__ import annotations

import pytest

from tts_core.fleet import Fleet, NoServerAvailable


def fleet(n: int = 3, **kw) -> tuple[Fleet, list[float]]:
    now = [0.0]
    return Fleet([f"http://s{i}/v1" for i in range(n)], clock=lambda: now[0], **kw), now


def test_ties_are_spread_round_robin_and_load_goes_to_the_least_busy() -> None:
    f, _ = fleet(3)
    picked = [f.pick().url for _ in range(3)]
    assert sorted(picked) == ["http://s0/v1", "http://s1/v1", "http://s2/v1"]
    f.begin(f.servers[0])
    f.begin(f.servers[1])
    assert f.pick() is f.servers[2]


def test_a_failed_server_is_skipped_until_its_backoff_ends_then_probed_once_at_a_time() -> None:
    f, now = fleet(2, backoff_s=5.0)
    a, b = f.servers
    f.failed(a, "refused")
    assert all(f.pick() is b for _ in range(4))
    now[0] = 5.1
    probe = next(s for s in (f.pick() for _ in range(2)) if s is a)
    f.begin(probe)  # the probe is in flight: nobody else is sent to A meanwhile,
    f.begin(b)  # however busy B is
    f.begin(b)
    assert all(f.pick() is b for _ in range(4))
    f.end(b)
    f.end(b)
    f.succeeded(a, 0.05)
    f.end(a)
    assert a.state == "up" and {f.pick().url for _ in range(2)} == {a.url, b.url}


def test_backoff_doubles_on_failed_probes_up_to_a_cap_and_resets_on_success() -> None:
    f, now = fleet(1, backoff_s=2.0, max_backoff_s=5.0)
    (a,) = f.servers
    spans = []
    for _ in range(3):
        f.failed(a, "boom")
        spans.append(a.backoff_until - now[0])
        now[0] = a.backoff_until
    assert spans == [2.0, 4.0, 5.0]
    f.succeeded(a)
    f.failed(a, "boom")
    assert a.backoff_until - now[0] == 2.0


def test_when_every_server_backs_off_the_one_recovering_first_is_tried_anyway() -> None:
    f, _ = fleet(2, backoff_s=5.0)
    a, b = f.servers
    f.failed(b, "x")
    f.failed(b, "x")  # longer back-off
    f.failed(a, "x")
    assert f.pick() is a
    with pytest.raises(NoServerAvailable):
        f.pick(exclude=[a, b])


def test_snapshot_reports_state_latency_and_failures() -> None:
    f, _ = fleet(1)
    (a,) = f.servers
    for ms in (10, 20, 30, 40):
        f.succeeded(a, ms / 1000)
    f.failed(a, "HTTP 500: boom")
    (snap,) = f.snapshot()
    assert snap["state"] == "backoff" and snap["failures"] == 1 and snap["last_error"] == "HTTP 500: boom"
    assert snap["first_byte_ms_p50"] == 30.0 and snap["retry_in_s"] == 5.0
