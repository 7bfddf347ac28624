"""RemoteRecogniser against STAND-IN transcription servers (tests/transcription_standin.py): what it
sends, the answer shapes it reads, and the remote engine's failover rules (fewest in flight, one
retry elsewhere, back-off and probe, request errors not retried); then its servers in /health and
/metrics of a bridge running with VOICE_BRIDGE_STT=openai."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from telephony.testing.asgi_server import free_port_url, serve_asgi
from telephony.testing.bridge_harness import running_bridge
from tests.transcription_standin import TranscriptionStandin
from tts_core.stt import RecogniserError, create_recogniser
from tts_core.stt.openai_remote import RemoteRecogniser, parse_transcription

KEY = "sk-stt-secret-0123"
ONE_SECOND = (0.2 * np.sin(np.arange(16000) * 2 * np.pi * 300 / 16000)).astype(np.float32)


@contextlib.asynccontextmanager
async def standins(*servers: TranscriptionStandin) -> AsyncIterator[list[str]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve_asgi(s.app())) + "/v1" for s in servers]


@contextlib.asynccontextmanager
async def loaded(urls: list[str], **options: object) -> AsyncIterator[RemoteRecogniser]:
    recogniser = RemoteRecogniser(urls, api_key=KEY, **options)  # type: ignore[arg-type]
    await recogniser.load()
    try:
        yield recogniser
    finally:
        await recogniser.aclose()


@pytest.mark.slow
async def test_a_turn_is_sent_in_openai_shape_and_its_text_returned() -> None:
    server = TranscriptionStandin(text="go forward ten meters")
    async with standins(server) as urls, loaded(urls, model="whisper-large-v3") as recogniser:
        transcript = await recogniser.transcribe(ONE_SECOND, language="en")
        assert transcript.text == "go forward ten meters"
        assert transcript.language == "en" and transcript.duration == 1.0 and transcript.decode_ms > 0
        (request,) = server.requests
        assert request["fields"] == {"model": "whisper-large-v3", "response_format": "json",
                                     "language": "en"}
        assert request["audio"] == {"rate": 16000, "channels": 1, "width": 2, "frames": 16000}
        assert request["content_type"] == "audio/wav" and request["filename"].endswith(".wav")
        assert request["headers"]["authorization"] == f"Bearer {KEY}"
        await recogniser.transcribe(ONE_SECOND)  # no language: none sent
        assert "language" not in server.requests[1]["fields"]
        assert (await recogniser.transcribe(np.zeros(0, np.float32))).text == ""
        assert len(server.requests) == 2  # an empty turn costs no request
    async with standins(server) as urls, loaded(urls, upload_rate=8000) as recogniser:
        await recogniser.transcribe(ONE_SECOND)
        assert server.requests[-1]["audio"]["rate"] == 8000
        assert server.requests[-1]["audio"]["frames"] == 8000
        assert server.requests[-1]["fields"]["model"] == "whisper-1"  # the default model name


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["json", "verbose_json", "text"])
async def test_answer_shapes(mode: str) -> None:
    server = TranscriptionStandin(text="hello there", mode=mode)
    async with standins(server) as urls, loaded(urls) as recogniser:
        transcript = await recogniser.transcribe(ONE_SECOND)
        assert transcript.text == "hello there"
        assert transcript.language == "en"


def test_parse_transcription_refuses_what_is_not_a_transcript() -> None:
    assert parse_transcription(b'{"text": " hi ", "language": "french"}', "application/json") == ("hi", "fr")
    assert parse_transcription(b"hi\n", "text/plain; charset=utf-8") == ("hi", None)
    for body, kind in ((b'{"result": "hi"}', "application/json"), (b"{nope", "application/json"),
                       (b"<html/>", "text/html"), (b'["hi"]', "application/json")):
        with pytest.raises(ValueError):
            parse_transcription(body, kind)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["openai", "detail", "detail_list"])
async def test_a_request_error_is_not_retried_and_keeps_the_server_in_service(shape: str) -> None:
    first = TranscriptionStandin(mode="error", status=400, error_shape=shape)
    second = TranscriptionStandin(mode="error", status=400, error_shape=shape)
    async with standins(first, second) as urls, loaded(urls) as recogniser:
        with pytest.raises(RecogniserError) as refused:
            await recogniser.transcribe(ONE_SECOND)
        assert "voice 'nope' is not available" in str(refused.value)  # the body, in any shape
        assert "HTTP 400" in str(refused.value)
        assert len(first.requests) + len(second.requests) == 1
        assert [s["state"] for s in recogniser.servers()] == ["up", "up"]


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["500", "503-detail", "refused", "slow", "garbage"])
async def test_a_failing_server_fails_over_backs_off_and_is_probed_later(failure: str) -> None:
    now = [1000.0]
    bad = TranscriptionStandin(text="from the bad one")
    if failure.startswith("5"):
        bad.mode, bad.status = "error", int(failure[:3])
        bad.error_shape = "detail" if failure.endswith("detail") else "openai"
    elif failure == "slow":
        bad.delay_s = 3.0
    elif failure == "garbage":
        bad.mode = "garbage"
    good = TranscriptionStandin(text="from the good one")
    async with standins(bad, good) as urls, \
            loaded([free_port_url() + "/v1" if failure == "refused" else urls[0], urls[1]],
                   timeout_s=0.5, backoff_s=5.0, clock=lambda: now[0]) as recogniser:
        started = time.monotonic()
        transcript = await recogniser.transcribe(ONE_SECOND)
        assert transcript.text == "from the good one"
        assert time.monotonic() - started < 2.0  # the slow one is given up after timeout_s
        bad_state, good_state = recogniser.servers()
        assert bad_state["state"] == "backoff" and bad_state["failures"] == 1
        assert bad_state["last_error"] and KEY not in bad_state["last_error"]
        assert good_state["state"] == "up" and good_state["requests"] == 1
        # Backing off: the next turns go to the good server only.
        await recogniser.transcribe(ONE_SECOND)
        assert recogniser.servers()[0]["requests"] == 1 and recogniser.servers()[1]["requests"] == 2
        # Back-off over: the bad server is a candidate again (ties go round-robin, so one of the
        # next two turns probes it). Recovered, it is back in service; still dead, its back-off doubles.
        now[0] += 5.1
        bad.mode, bad.delay_s = "json", 0.0
        texts = {(await recogniser.transcribe(ONE_SECOND)).text for _ in range(2)}
        assert recogniser.servers()[0]["requests"] == 2
        if failure == "refused":
            assert texts == {"from the good one"}
            assert recogniser.servers()[0]["state"] == "backoff"
            assert 9.5 < recogniser.servers()[0]["retry_in_s"] <= 10.0  # doubled
        else:
            assert texts == {"from the good one", "from the bad one"}
            assert recogniser.servers()[0]["state"] == "up"


@pytest.mark.slow
async def test_a_turn_no_server_can_take_is_one_error_without_the_key(caplog: pytest.LogCaptureFixture
                                                                      ) -> None:
    caplog.set_level(logging.DEBUG)
    first = TranscriptionStandin(mode="error", status=502)
    async with standins(first) as urls, loaded([urls[0], free_port_url() + "/v1"]) as recogniser:
        with pytest.raises(RecogniserError) as failed:
            await recogniser.transcribe(ONE_SECOND)
        message = str(failed.value)
        assert "HTTP 502" in message and "cannot reach server" in message  # both servers named
        assert KEY not in message and KEY not in caplog.text
        assert [s["state"] for s in recogniser.servers()] == ["backoff", "backoff"]


@pytest.mark.slow
async def test_turns_go_to_the_server_with_fewest_in_flight_and_cancelling_frees_it() -> None:
    first, second = TranscriptionStandin(), TranscriptionStandin()
    first.release = second.release = asyncio.Event()
    async with standins(first, second) as urls, loaded(urls) as recogniser:
        turns = [asyncio.create_task(recogniser.transcribe(ONE_SECOND)) for _ in range(4)]
        async with asyncio.timeout(5):
            await first.wait_requests(2)
            await second.wait_requests(2)
        assert len(first.requests) == len(second.requests) == 2
        assert recogniser.busy == 4 and [s["in_flight"] for s in recogniser.servers()] == [2, 2]
        turns[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await turns[0]
        assert recogniser.busy == 3
        first.release.set()
        assert [t.text for t in await asyncio.gather(*turns[1:])] == ["hello from the stand-in"] * 3
        assert recogniser.busy == 0 and [s["state"] for s in recogniser.servers()] == ["up", "up"]


def test_create_recogniser_builds_the_remote_one() -> None:
    recogniser = create_recogniser("openai", urls=["http://a:1/v1", "http://b:1/v1"], model="m")
    assert isinstance(recogniser, RemoteRecogniser) and recogniser.model == "m"
    assert [s["url"] for s in recogniser.servers()] == ["http://a:1/v1", "http://b:1/v1"]


@pytest.mark.slow
async def test_a_bridge_shows_its_transcription_servers_in_health_and_metrics() -> None:
    good = TranscriptionStandin()
    async with standins(good) as urls:
        dead = free_port_url() + "/v1"
        async with running_bridge(stt="openai", stt_url=f"{urls[0]},{dead}", stt_api_key=KEY) as rb, \
                httpx.AsyncClient() as client:
            assert isinstance(rb.bridge.recogniser, RemoteRecogniser)
            health = (await client.get(f"{rb.base_url}/health")).json()
            assert health["stt"]["name"] == "openai"
            assert [s["url"] for s in health["stt"]["servers"]] == [urls[0], dead]
            recogniser = rb.bridge.recogniser
            for _ in range(2):  # one of them goes to the dead server, fails over to the good one
                await recogniser.transcribe(ONE_SECOND)
            health = (await client.get(f"{rb.base_url}/health")).json()
            states = {s["url"]: s["state"] for s in health["stt"]["servers"]}
            assert states == {urls[0]: "up", dead: "backoff"} and health["status"] == "ok"
            metrics = (await client.get(f"{rb.base_url}/metrics")).text
            assert f'voice_bridge_stt_server_requests_total{{server="{urls[0]}"}} 2.0' in metrics
            assert f'voice_bridge_stt_server_up{{server="{dead}"}} 0.0' in metrics
            assert KEY not in metrics and KEY not in str(health)


def test_settings_for_remote_recognition() -> None:
    from telephony.config import ConfigError, settings_from_env

    env = {"VOICE_BRIDGE_INSECURE_DEV": "true", "VOICE_BRIDGE_STT": "openai"}
    with pytest.raises(ConfigError, match="VOICE_BRIDGE_STT_URL"):
        settings_from_env(env)
    with pytest.raises(ConfigError, match="must end in /v1"):
        settings_from_env({**env, "VOICE_BRIDGE_STT_URL": "http://gpu1:8000"})
    with pytest.raises(ConfigError, match="8000 or 16000"):
        settings_from_env({**env, "VOICE_BRIDGE_STT_URL": "http://gpu1:8000/v1",
                           "VOICE_BRIDGE_STT_UPLOAD_RATE": "44100"})
    settings = settings_from_env({**env, "VOICE_BRIDGE_STT_URL": "http://gpu1:8000/v1/, http://gpu2:8000/v1",
                                  "VOICE_BRIDGE_STT_API_KEY": KEY})
    assert settings.stt_urls() == ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
    assert KEY not in repr(settings)
