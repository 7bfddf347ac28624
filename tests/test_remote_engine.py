"""The remote engine (``VOICE_BRIDGE_ENGINE=openai``) against stand-in servers over real HTTP on
loopback: how each server quirk is taken, failover, back-off, timeouts and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import aclosing

import httpx
import numpy as np
import pytest

from telephony.testing.asgi_server import free_port_url, serve_asgi
from tests.speech_standin import ERROR_BODIES, SpeechStandin
from tts_core.engines import EngineError, SpeechRequest
from tts_core.engines.openai_remote import OpenAIRemoteEngine
from tts_core.presets import load_presets

PRESETS = load_presets()
BALANCED = PRESETS.get("balanced")


@contextlib.asynccontextmanager
async def standins(count: int = 1) -> AsyncIterator[list[tuple[SpeechStandin, str]]]:
    """``count`` stand-in servers; yields (behaviour, base URL ending in /v1) pairs."""
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for _ in range(count):
            standin = SpeechStandin()
            url = await stack.enter_async_context(serve_asgi(standin.app()))
            servers.append((standin, url + "/v1"))
        yield servers


@contextlib.asynccontextmanager
async def remote(urls: list[str], **options: object) -> AsyncIterator[OpenAIRemoteEngine]:
    options.setdefault("voices", ["alloy", "nova"])
    engine = OpenAIRemoteEngine(urls, **options)  # type: ignore[arg-type]
    await engine.load()
    try:
        yield engine
    finally:
        await engine.aclose()


def utterance(text: str = "Hello there.", voice: str = "alloy", preset=BALANCED) -> SpeechRequest:
    return SpeechRequest(text=text, voice_id=voice, preset=preset)


async def speak(engine: OpenAIRemoteEngine, request: SpeechRequest | None = None) -> np.ndarray:
    chunks = [c async for c in engine.stream(request or utterance())]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def pcm_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def dominant_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.argmax(spectrum) * rate / audio.size)


# ---- one server, each kind of answer --------------------------------------------------------------
async def test_pcm_in_odd_sized_chunks_arrives_bit_exact_with_the_request_fields() -> None:
    async with standins() as [(server, url)], remote([url], api_key="sk-test", model="kokoro") as engine:
        audio = await speak(engine, utterance("Good morning.", voice="nova"))
        np.testing.assert_array_equal(audio, pcm_float(server.expected_pcm()))
        body = server.requests[0]
        assert body == {"model": "kokoro", "input": "Good morning.", "voice": "nova",
                        "response_format": "pcm", "stream_format": "audio", "speed": 1.0}
        assert server.headers_seen[0]["authorization"] == "Bearer sk-test"


@pytest.mark.slow
async def test_stream_fields_and_preset_parameters_are_configurable() -> None:
    async with standins() as [(server, url)], remote(
            [url], stream_fields=["stream"], send_preset_params=True) as engine:
        await speak(engine)
        body = server.requests[0]
        assert body["stream"] is True and "stream_format" not in body and "speed" not in body
        assert body["exaggeration"] == BALANCED.exaggeration and body["cfg_weight"] == BALANCED.cfg_weight


@pytest.mark.slow
async def test_a_content_length_body_arriving_at_once_is_taken_whole() -> None:
    async with standins() as [(server, url)], remote([url]) as engine:
        server.mode = "content_length"
        audio = await speak(engine)
        np.testing.assert_array_equal(audio, pcm_float(server.expected_pcm()))


@pytest.mark.slow
async def test_pcm_announced_at_22050_in_x_sample_rate_is_resampled_to_the_engine_rate() -> None:
    async with standins() as [(server, url)], remote([url]) as engine:
        server.mode, server.rate, server.seconds = "x_sample_rate", 22050, 1.0
        audio = await speak(engine)
        assert engine.sample_rate == 24000
        assert abs(audio.size - 24000) < 200  # 1 s at 24 kHz, not 22050 samples played too fast
        assert abs(dominant_hz(audio, 24000) - 440) < 3


@pytest.mark.slow
async def test_a_configured_sample_rate_overrides_the_header() -> None:
    async with standins() as [(server, url)], remote([url], sample_rate=22050) as engine:
        server.mode, server.rate = "x_sample_rate", 16000  # the server lies; the operator knows
        audio = await speak(engine)
        assert engine.sample_rate == 22050
        assert audio.size == len(server.expected_pcm()) // 2


@pytest.mark.slow
async def test_a_wav_body_has_its_header_skipped_and_its_rate_honoured() -> None:
    async with standins() as [(server, url)], remote([url]) as engine:
        server.mode, server.rate, server.seconds = "wav", 16000, 1.0
        audio = await speak(engine)
        assert abs(audio.size - 24000) < 200
        assert abs(dominant_hz(audio, 24000) - 440) < 3


@pytest.mark.slow
async def test_server_sent_events_of_base64_audio_deltas_are_decoded() -> None:
    async with standins() as [(server, url)], remote([url]) as engine:
        server.mode = "sse"
        audio = await speak(engine)
        np.testing.assert_array_equal(audio, pcm_float(server.expected_pcm()))


@pytest.mark.slow
async def test_first_byte_timeout_counts_to_the_first_audio_byte_not_the_headers() -> None:
    async with standins() as [(server, url)], remote([url], first_byte_timeout_s=0.3) as engine:
        server.mode, server.audio_delay_s = "pcm", 1.0  # headers at once, audio only after 1 s
        with pytest.raises(EngineError, match="first-byte timeout"):
            await speak(engine)
    async with standins() as [(server, url)], remote([url], first_byte_timeout_s=3.0) as engine:
        server.audio_delay_s = 0.3
        audio = await speak(engine)
        assert audio.size == len(server.expected_pcm()) // 2
        assert engine.servers()[0]["first_byte_ms_p50"] >= 300  # timed on audio, not headers


@pytest.mark.slow
@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("shape", sorted(ERROR_BODIES))
async def test_json_error_bodies_become_one_engine_error_with_the_servers_message(
        status: int, shape: str) -> None:
    async with standins() as [(server, url)], remote([url]) as engine:
        server.mode = "json200" if status == 200 else "error"
        server.error_shape, server.status = shape, status
        with pytest.raises(EngineError, match="voice 'nope' is not available"):
            await speak(engine)


@pytest.mark.slow
async def test_an_empty_200_is_an_engine_error_not_silence() -> None:
    async with standins() as [(server, url)], remote([url]) as engine:
        server.mode = "empty"
        with pytest.raises(EngineError, match="no audio"):
            await speak(engine)


@pytest.mark.slow
async def test_a_refused_request_is_not_retried_and_leaves_the_server_in_service() -> None:
    async with standins(2) as [(a, url_a), (b, url_b)], remote([url_a, url_b]) as engine:
        a.mode = b.mode = "error"
        a.status = b.status = 400
        with pytest.raises(EngineError, match="refused the utterance"):
            await speak(engine)
        assert len(a.requests) + len(b.requests) == 1
        assert [s["state"] for s in engine.servers()] == ["up", "up"]


# ---- a fleet -----------------------------------------------------------------------------------
@pytest.mark.slow
async def test_a_failure_before_the_first_byte_is_retried_once_on_another_server() -> None:
    async with standins() as [(server, url)], remote([free_port_url() + "/v1", url]) as engine:
        for _ in range(3):
            audio = await speak(engine)
            np.testing.assert_array_equal(audio, pcm_float(server.expected_pcm()))
        dead, live = engine.servers()
        assert dead["state"] == "backoff" and dead["failures"] == 1  # skipped after its failure
        assert live["requests"] == 3 and live["failures"] == 0


@pytest.mark.slow
async def test_an_empty_200_fails_over_to_the_next_server() -> None:
    async with standins(2) as [(a, url_a), (b, url_b)], remote([url_a, url_b]) as engine:
        a.mode = b.mode = "empty"
        with pytest.raises(EngineError, match="no audio"):
            await speak(engine)
        assert len(a.requests) == 1 and len(b.requests) == 1  # retried exactly once, elsewhere


@pytest.mark.slow
async def test_a_stream_that_stalls_after_audio_is_an_error_and_never_retried() -> None:
    async with standins(2) as [(a, url_a), (b, url_b)], remote([url_a, url_b],
                                                                 stall_timeout_s=0.3) as engine:
        a.mode = b.mode = "stall"
        received: list[np.ndarray] = []
        with pytest.raises(EngineError, match="stalled"):
            async for chunk in engine.stream(utterance()):
                received.append(chunk)
        assert received  # audio was delivered, so a retry would repeat it
        assert len(a.requests) + len(b.requests) == 1
        assert sorted(s["state"] for s in engine.servers()) == ["backoff", "up"]


@pytest.mark.slow
async def test_cancelling_an_utterance_closes_the_http_stream_so_the_server_stops() -> None:
    async with standins() as [(server, url)], remote([url]) as engine:
        server.mode, server.seconds = "slow", 5.0
        async with aclosing(engine.stream(utterance())) as chunks:
            await anext(chunks)
            assert engine.busy_slots == 1
        await asyncio.wait_for(server.disconnected.wait(), 5)
        assert server.completed == 0
        assert engine.busy_slots == 0 and engine.stats.cancelled == 1


@pytest.mark.slow
async def test_utterances_go_to_the_server_with_fewest_in_flight() -> None:
    async with standins(2) as [(a, url_a), (b, url_b)], remote([url_a, url_b]) as engine:
        a.mode = b.mode = "slow"
        a.seconds = b.seconds = 2.0
        streams = [engine.stream(utterance(f"utterance {i}")) for i in range(4)]
        for s in streams:
            await anext(s)
        assert [s["in_flight"] for s in engine.servers()] == [2, 2]
        for s in streams:
            await s.aclose()
        assert engine.busy_slots == 0


@pytest.mark.slow
async def test_a_failed_server_is_probed_again_after_its_backoff() -> None:
    now = [1000.0]
    async with standins(2) as [(a, url_a), (b, url_b)], remote(
            [url_a, url_b], backoff_s=10.0, clock=lambda: now[0]) as engine:
        a.mode, a.status = "error", 503
        for _ in range(3):
            await speak(engine)
        assert len(a.requests) == 1 and len(b.requests) == 3  # A failed once, then skipped
        a.mode = "pcm"
        now[0] += 10.5  # back-off over: the next utterance may probe A
        await speak(engine)
        await speak(engine)
        assert len(a.requests) >= 2
        assert engine.servers()[0]["state"] == "up"


@pytest.mark.slow
async def test_warmup_warms_every_server_and_reports_each() -> None:
    async with standins(2) as [(a, url_a), (b, url_b)], remote([url_a, url_b]) as engine:
        timings = await engine.warmup("alloy", BALANCED)
        assert set(timings) == {url_a, url_b}
        assert len(a.requests) == 1 and len(b.requests) == 1
    dead = free_port_url() + "/v1"
    async with standins() as [(a, url_a)], remote([url_a, dead]) as engine:
        assert set(await engine.warmup("alloy", BALANCED)) == {url_a}
        assert engine.servers()[1]["state"] == "backoff"
    async with remote([dead]) as engine:
        with pytest.raises(EngineError, match="no TTS server warmed up"):
            await engine.warmup("alloy", BALANCED)


# ---- the bridge around it ----------------------------------------------------------------------
@pytest.mark.slow
async def test_health_metrics_and_warmup_show_each_server() -> None:
    from telephony.testing.bridge_harness import running_bridge

    dead = free_port_url() + "/v1"
    async with standins() as [(_, url)]:
        engine = OpenAIRemoteEngine([url, dead], voices=["alloy"])
        async with running_bridge(engine=engine) as rb, \
                rb.operator_client() as client:
            warm = (await client.post("/warmup", json={"voice": "alloy"})).json()
            assert list(warm["targets"]) == [url] and warm["ready"] is True
            health = (await client.get("/health")).json()
            servers = {s["url"]: s for s in health["engine"]["servers"]}
            assert servers[url]["state"] == "up" and servers[url]["first_byte_ms_p50"] is not None
            assert servers[dead]["state"] == "backoff" and "cannot reach" in servers[dead]["last_error"]
            metrics = (await client.get("/metrics")).text
            assert f'voice_bridge_engine_server_up{{server="{dead}"}} 0.0' in metrics
            assert f'voice_bridge_engine_server_up{{server="{url}"}} 1.0' in metrics
            assert f'voice_bridge_engine_server_failures_total{{server="{dead}"}} 1.0' in metrics


def test_settings_for_the_remote_engine_are_checked_at_start() -> None:
    from telephony.config import ConfigError, settings_from_env

    base = {"VOICE_BRIDGE_INSECURE_DEV": "1", "VOICE_BRIDGE_ENGINE": "openai"}
    with pytest.raises(ConfigError, match="needs VOICE_BRIDGE_ENGINE_URL"):
        settings_from_env(base)
    with pytest.raises(ConfigError, match="must end in /v1"):
        settings_from_env({**base, "VOICE_BRIDGE_ENGINE_URL": "http://gpu1:8000"})
    with pytest.raises(ConfigError, match="unknown field"):
        settings_from_env({**base, "VOICE_BRIDGE_ENGINE_URL": "http://gpu1:8000/v1",
                           "VOICE_BRIDGE_ENGINE_STREAM_FIELDS": "stream,foo"})
    settings = settings_from_env({**base, "VOICE_BRIDGE_ENGINE_URL": " http://gpu1:8000/v1/,http://gpu2:8000/v1",
                                  "VOICE_BRIDGE_ENGINE_VOICES": "af_heart, am_adam",
                                  "VOICE_BRIDGE_ENGINE_API_KEY": "sk-secret"})
    assert settings.engine_urls() == ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
    assert settings.engine_voice_names() == ["af_heart", "am_adam"]
    assert "sk-secret" not in repr(settings)


@pytest.mark.slow
async def test_webhooks_warm_the_fleet_once_per_voice_and_preset_not_once_per_call() -> None:
    from telephony.testing.bridge_harness import running_bridge

    async with standins(2) as [(a, url_a), (b, url_b)]:
        engine = OpenAIRemoteEngine([url_a, url_b], voices=["alloy", "nova"])
        async with running_bridge(engine=engine) as rb, httpx.AsyncClient() as client:
            for i in range(5):
                response = await rb.webhook(client, f"CA7{i}", "?voice=alloy&greeting=")
                assert response.status_code == 200
            await rb.webhook(client, "CA79", "?voice=nova&greeting=")
            while rb.bridge.background:  # the warmups spawned by the webhooks
                await asyncio.gather(*rb.bridge.background, return_exceptions=True)
    voices = sorted(r["voice"] for r in a.requests + b.requests)
    assert voices == ["alloy", "alloy", "nova", "nova"]  # each server once per voice, not per call


@pytest.mark.slow
async def test_streams_are_spread_over_several_small_connection_pools() -> None:
    # httpcore scans a whole pool on every request start and end: one pool of hundreds of streams
    # cost the bridge 20% of its CPU at 100 calls; small pools keep each scan short.
    async with standins() as [(server, url)], remote([url], max_in_flight_per_server=40) as engine:
        server.mode, server.seconds = "slow", 2.0
        assert len(engine._clients) == 3  # 40 connections as pools of at most 16
        streams = [engine.stream(utterance(f"utterance {i}")) for i in range(3)]
        for s in streams:
            await anext(s)
        assert engine._client_load == [1, 1, 1]  # each stream on the least-busy pool
        for s in streams:
            await s.aclose()
        assert engine._client_load == [0, 0, 0]
