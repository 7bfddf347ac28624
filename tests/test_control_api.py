"""Operator endpoints on the real server over loopback: /warmup, /preload, /health, /voices, /metrics.

Every error is JSON of one shape, ``{"error": {"code", "message"}}``, with a status that says whose
fault it is: 400 unreadable body, 404 no such voice, 422 a request we understood and refuse.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telephony.testing.bridge_harness import running_bridge
from tests.conftest import tone, wav_bytes
from tests.test_call_e2e import open_call
from tts_core.engines import create_engine


def write_wav(path: Path, seconds: float = 0.6, rate: int = 16000) -> None:
    """A short voice sample: a 180 Hz tone, clearly not silence."""
    path.write_bytes(wav_bytes(tone(seconds, rate), rate))


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    write_wav(tmp_path / "alice.wav")
    return tmp_path


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    """The error object of a response, after checking its status and its one shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    return error


def samples(metrics_text: str) -> dict[str, float]:
    """Prometheus exposition → value per sample name, summed over labels."""
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return totals


# ---- /warmup -------------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_warmup_answers_voice_preset_time_and_ready() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        response = await client.post("/warmup", json={"voice": "synthetic", "preset": "fast"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"voice", "preset", "warmup_ms", "targets", "ready"}
        assert set(body["targets"]) == {"engine"}  # one target: the in-process synthetic engine
        assert body["voice"] == "synthetic" and body["preset"] == "fast" and body["ready"] is True
        assert isinstance(body["warmup_ms"], int | float) and body["warmup_ms"] > 0


@pytest.mark.slow
async def test_warmup_without_a_body_uses_the_defaults() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        body = (await client.post("/warmup")).json()
        assert body["voice"] == "synthetic" and body["preset"] == rb.settings.default_preset
        assert body["ready"] is True


@pytest.mark.slow
async def test_warmup_of_a_stored_voice(voices_dir: Path) -> None:
    async with running_bridge(voices_dir=voices_dir) as rb, rb.operator_client() as client:
        response = await client.post("/warmup", json={"voice": "alice"})
        assert response.status_code == 200, response.text
        assert response.json()["voice"] == "alice"


@pytest.mark.slow
async def test_warmup_of_a_valid_but_unknown_voice_is_404(voices_dir: Path) -> None:
    async with running_bridge(voices_dir=voices_dir) as rb, rb.operator_client() as client:
        error = error_of(await client.post("/warmup", json={"voice": "nobody"}), 404)
        assert error["code"] == "voice_not_found" and "nobody" in error["message"]


INVALID_VOICE_IDS = ["../x", "a/b", "x" * 65, "voice.wav", "joe\n"]


@pytest.mark.slow
async def test_warmup_of_an_invalid_voice_id_is_422() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        for voice in INVALID_VOICE_IDS:
            response = await client.post("/warmup", json={"voice": voice})
            assert error_of(response, 422)["code"] == "invalid_voice", voice


@pytest.mark.slow
async def test_warmup_with_an_unknown_preset_is_422() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        error = error_of(await client.post("/warmup", json={"preset": "loud"}), 422)
        assert error["code"] == "unknown_preset" and "loud" in error["message"]


NOT_JSON = [b"{nope", b"voice=joe", b"\xff\xfe\x00", b"[" * 60_000]  # last: too deep, under the 64 KiB cap


@pytest.mark.slow
async def test_a_body_that_is_not_json_is_400() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        for body in NOT_JSON:
            for path in ("/warmup", "/preload"):
                response = await client.post(path, content=body)
                assert error_of(response, 400)["code"] == "invalid_json", (path, body[:10])


BAD_WARMUPS = [{"voice": "synthetic", "speed": 2}, {"voices": ["synthetic"]}, {"voice": 5},
               ["synthetic"], "synthetic", None]


BAD_PRELOADS = [{"voices": []}, [], {}, {"voices": "alice"}, {"voices": [1]},
                {"voices": ["a"], "extra": 1}, {"voices": ["v"] * 65}]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "bodies"), [("/warmup", BAD_WARMUPS), ("/preload", BAD_PRELOADS)])
async def test_unknown_fields_wrong_types_and_bad_sizes_are_422(path: str, bodies: list[object]) -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        for body in bodies:
            response = await client.post(path, content=json.dumps(body))
            assert error_of(response, 422)["code"] == "invalid_request", body


@pytest.mark.slow
async def test_unknown_fields_are_named_in_the_details() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        response = await client.post("/warmup", json={"voice": "synthetic", "speed": 2})
        assert {"field": "speed", "message": "Extra inputs are not permitted"} in (
            response.json()["error"]["details"])


# ---- /preload ------------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_preload_reports_each_voice_and_the_cache(voices_dir: Path) -> None:
    async with running_bridge(voices_dir=voices_dir) as rb, rb.operator_client() as client:
        response = await client.post("/preload", json={"voices": ["synthetic", "alice", "ghost"]})
        assert response.status_code == 200, response.text
        body = response.json()
        results = body["results"]
        assert set(results) == {"synthetic", "alice", "ghost"}
        assert results["synthetic"] == {"ok": True, "source": "builtin"}
        assert results["alice"]["ok"] is True and results["alice"]["source"] == "local"
        assert results["ghost"]["ok"] is False and results["ghost"]["error_type"] == "VoiceNotFound"
        assert "ghost" in results["ghost"]["error"]
        assert body["ok"] is False
        assert body["elapsed_ms"] >= 0
        cache = body["cache"]
        assert cache["size"] == 1 and cache["capacity"] == rb.settings.voice_cache_size
        assert cache["local_hits"] == 1 and cache["misses"] == 1


@pytest.mark.slow
async def test_preload_accepts_a_bare_json_list_and_serves_from_memory_the_second_time(
        voices_dir: Path) -> None:
    async with running_bridge(voices_dir=voices_dir) as rb, rb.operator_client() as client:
        first = (await client.post("/preload", json=["alice"])).json()
        assert first["ok"] is True and first["results"]["alice"]["source"] == "local"
        again = (await client.post("/preload", json=["alice", "synthetic"])).json()
        assert again["ok"] is True and again["results"]["alice"]["source"] == "memory"
        assert again["cache"]["memory_hits"] == 1


@pytest.mark.slow
async def test_preload_reports_an_invalid_id_as_a_failed_result() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        body = (await client.post("/preload", json={"voices": ["../x"]})).json()
        assert body["results"]["../x"]["ok"] is False
        assert body["results"]["../x"]["error_type"] == "InvalidVoiceId"


# ---- /health and /voices -----------------------------------------------------------------------------
@pytest.mark.slow
async def test_health_describes_engine_calls_and_security() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        response = await client.get("/health")
        assert response.status_code == 200
        health = response.json()
        assert health["status"] == "ok"
        assert health["engine"] == {"name": "synthetic", "sample_rate": 24000, "busy_slots": 0}
        assert health["active_calls"] == 0
        assert health["security"] == "signatures checked" and "warning" not in health
        assert health["default_voice"] == "synthetic"
        assert "balanced" in health["presets"]


@pytest.mark.slow
async def test_health_warns_loudly_when_signatures_are_not_checked() -> None:
    async with running_bridge(twilio_auth_token=None, insecure_dev=True) as rb:
        async with rb.operator_client() as client:
            health = (await client.get("/health")).json()
    assert health["security"].startswith("INSECURE") and "not checked" in health["security"]
    assert "--insecure-dev" in health["warning"]


@pytest.mark.slow
async def test_health_counts_active_calls() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        call = await open_call(rb, client, "CA40", "?greeting=Hello.")
        assert await call.wait_for(lambda: call.stats.media_received > 0)
        assert (await client.get("/health")).json()["active_calls"] == 1
        await call.hang_up()


@pytest.mark.slow
async def test_voices_lists_builtin_and_stored_voices(voices_dir: Path) -> None:
    write_wav(voices_dir / "bob.wav")
    (voices_dir / "notes.txt").write_text("not a voice")
    async with running_bridge(voices_dir=voices_dir) as rb, rb.operator_client() as client:
        body = (await client.get("/voices")).json()
    assert body["default"] == "synthetic"
    assert body["voices"] == [
        {"id": "synthetic", "kind": "builtin", "engine": "synthetic"},
        {"id": "alice", "kind": "reference", "engine": "synthetic", "usable": True},
        {"id": "bob", "kind": "reference", "engine": "synthetic", "usable": True},
    ]


# ---- /metrics ------------------------------------------------------------------------------------------
METRICS = {
    "voice_bridge_active_calls": "gauge",
    "voice_bridge_time_to_first_audio_seconds": "histogram",
    "voice_bridge_frames_sent_total": "counter",
    "voice_bridge_underruns_total": "counter",
    "voice_bridge_barge_ins_total": "counter",
    "voice_bridge_errors_total": "counter",
}


@pytest.mark.slow
async def test_metrics_are_prometheus_text_with_the_bridge_metrics() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    for name, kind in METRICS.items():
        assert name in response.text
        assert families[name.removesuffix("_total")] == kind, name  # the parser drops a counter's _total
    values = samples(response.text)
    assert values["voice_bridge_active_calls"] == 0
    assert values["voice_bridge_frames_sent_total"] == 0


@pytest.mark.slow
async def test_a_short_call_shows_up_in_the_metrics() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA41", "?greeting=Hi%20there.")
        assert await call.wait_for(lambda: call.played_utterances(), timeout=10)
        await call.hang_up()
        values = samples((await client.get(rb.base_url + "/metrics")).text)
    assert values["voice_bridge_frames_sent_total"] > 0
    assert values["voice_bridge_time_to_first_audio_seconds_count"] > 0
    assert values["voice_bridge_calls_total"] == 1


# ---- every error has one shape -----------------------------------------------------------------------
@pytest.mark.slow
async def test_unknown_routes_and_methods_are_json_errors_too() -> None:
    async with running_bridge() as rb, rb.operator_client() as client:
        assert error_of(await client.get("/nope"), 404)["code"] == "http_error"
        assert error_of(await client.get("/warmup"), 405)["code"] == "http_error"
        assert error_of(await client.post("/health"), 405)["code"] == "http_error"


# ---- the real Piper engine ---------------------------------------------------------------------------
@pytest.mark.slow
async def test_warmup_with_the_real_piper_engine() -> None:
    # running_bridge's ``engine`` is an Engine object (its settings engine cannot be overridden by name),
    # so the Piper engine is built here exactly as Bridge.start would build it.
    async with running_bridge(engine=create_engine("piper")) as rb:
        async with rb.operator_client(timeout=30) as client:
            response = await client.post("/warmup", json={"voice": "joe"})
            health = (await client.get("/health")).json()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["voice"] == "joe" and body["ready"] is True and body["warmup_ms"] > 0
    assert health["engine"]["name"] == "piper" and health["default_voice"] == "joe"
