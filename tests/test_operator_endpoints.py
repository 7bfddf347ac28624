"""/warmup, /preload, /health, /voices and /metrics on the real server; errors are always JSON."""

from __future__ import annotations

import wave
from pathlib import Path

import httpx
import numpy as np

from tests.bridge_harness import running_bridge
from tests.test_call_e2e import open_call


def write_voice(directory: Path, name: str, seconds: float = 1.0) -> None:
    t = np.arange(int(16000 * seconds)) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(directory / f"{name}.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]


async def test_warmup_runs_the_whole_audio_path_and_reports_its_time() -> None:
    async with running_bridge() as rb, httpx.AsyncClient(base_url=rb.base_url) as client:
        response = await client.post("/warmup", json={"voice": "synthetic", "preset": "fast"})
        assert response.status_code == 200
        body = response.json()
        assert body["voice"] == "synthetic" and body["preset"] == "fast" and body["ready"] is True
        assert body["warmup_ms"] > 0


async def test_warmup_errors_are_json_with_the_right_status(tmp_path: Path) -> None:
    async with running_bridge(voices_dir=tmp_path) as rb, httpx.AsyncClient(base_url=rb.base_url) as client:
        assert_error(await client.post("/warmup", json={"voice": "nobody"}), 404, "voice_not_found")
        assert_error(await client.post("/warmup", json={"voice": "../etc"}), 422, "invalid_voice")
        assert_error(await client.post("/warmup", json={"preset": "loud"}), 422, "unknown_preset")
        assert_error(await client.post("/warmup", content=b"{nope"), 400, "invalid_json")
        assert_error(await client.post("/warmup", json={"voice": "x", "extra": 1}), 422, "invalid_request")


async def test_preload_reports_each_voice_and_the_cache(tmp_path: Path) -> None:
    write_voice(tmp_path, "alice")
    async with running_bridge(voices_dir=tmp_path) as rb, httpx.AsyncClient(base_url=rb.base_url) as client:
        response = await client.post("/preload", json={"voices": ["alice", "synthetic", "ghost"]})
        assert response.status_code == 200
        body = response.json()
        assert body["results"]["alice"]["ok"] is True
        assert body["results"]["synthetic"] == {"ok": True, "source": "builtin"}
        assert body["results"]["ghost"]["ok"] is False
        assert body["ok"] is False and "capacity" in body["cache"]
        bare = await client.post("/preload", json=["alice"])  # a bare JSON list is accepted too
        assert bare.json()["results"]["alice"]["ok"] is True
        assert_error(await client.post("/preload", json={"voices": []}), 422, "invalid_request")


async def test_health_and_voices_describe_the_server(tmp_path: Path) -> None:
    write_voice(tmp_path, "bob")
    async with running_bridge(voices_dir=tmp_path) as rb, httpx.AsyncClient(base_url=rb.base_url) as client:
        health = (await client.get("/health")).json()
        assert health["status"] == "ok" and health["engine"]["name"] == "synthetic"
        assert health["security"] == "signatures checked" and "warning" not in health
        voices = (await client.get("/voices")).json()
        assert {v["id"] for v in voices["voices"]} == {"synthetic", "bob"}


async def test_insecure_mode_is_shown_loudly_on_health() -> None:
    async with running_bridge(twilio_auth_token=None, insecure_dev=True) as rb:
        async with httpx.AsyncClient(base_url=rb.base_url) as client:
            health = (await client.get("/health")).json()
        assert health["security"].startswith("INSECURE") and "insecure" in health["warning"]


async def test_metrics_count_a_call() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA31", "?greeting=Hi.")
        assert await call.wait_for(lambda: call.played_utterances())
        await call.hang_up()
        text = (await client.get(rb.base_url + "/metrics")).text
    for name in ("voice_bridge_active_calls", "voice_bridge_time_to_first_audio_seconds_count",
                 "voice_bridge_frames_sent_total", "voice_bridge_underruns_total",
                 "voice_bridge_barge_ins_total", "voice_bridge_engine_first_chunk_seconds_count"):
        assert name in text, name
    frames = next(line for line in text.splitlines() if line.startswith("voice_bridge_frames_sent_total"))
    assert float(frames.split()[-1]) > 0


async def test_unknown_routes_and_methods_answer_json() -> None:
    async with running_bridge() as rb, httpx.AsyncClient(base_url=rb.base_url) as client:
        assert_error(await client.get("/nope"), 404, "http_error")
        assert_error(await client.get("/warmup"), 405, "http_error")
