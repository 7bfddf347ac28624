"""The bridge as an OpenAI-compatible speech server, on the real server over loopback.

The peer is the official ``openai`` client where it can express the request (streamed pcm, wav,
sse, its error classes), plain httpx where the test needs the wire (headers, bodies it would not
send, disconnecting mid-body). Audio is checked for what a client relies on: pcm/wav at 24 kHz
whatever the engine's rate, the length the engine spoke, not silence, one seamless stream across
text segments; mulaw at 8 kHz.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import struct
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from telephony import speech_api
from telephony.speech_stream import AudioStreamResponse
from telephony.testing.bridge_harness import RunningBridge, running_bridge
from tests.conftest import eventually
from tests.test_control_api import write_wav
from tts_core.audio import Pcm16Encoder, mulaw_to_pcm16
from tts_core.engines.base import EngineError, SpeechRequest
from tts_core.engines.piper import PiperEngine
from tts_core.engines.synthetic import SyntheticEngine
from tts_core.presets import load_presets
from tts_core.text.segmenter import segment_text

KEY = "test-api-key-0123456789"
SPC = 0.06  # SyntheticEngine's default seconds per character
TEXT = "Hello there, this is the bridge speaking."


def client(rb: RunningBridge, key: str | None = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{rb.base_url}/v1", api_key=key or "none", max_retries=0)


def pcm16(data: bytes) -> np.ndarray:
    assert len(data) % 2 == 0, "pcm must be whole 16-bit samples"
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12)


async def stream_speech(rb: RunningBridge, **params: object) -> tuple[bytes, dict[str, str]]:
    """The whole streamed body and headers, through the openai client's streaming response."""
    async with client(rb).audio.speech.with_streaming_response.create(
        model="tts-1", voice=params.pop("voice", "synthetic"), input=params.pop("input", TEXT),
        **params,  # type: ignore[arg-type]
    ) as response:
        body = b"".join([chunk async for chunk in response.iter_bytes()])
        return body, dict(response.headers)


# ---- audio formats ----------------------------------------------------------------------------
@pytest.mark.slow
async def test_pcm_streams_24khz_from_a_16khz_engine_while_it_synthesises() -> None:
    engine = SyntheticEngine(sample_rate=16000, realtime_factor=1.0)
    async with running_bridge(engine, api_key=KEY) as rb:
        async with client(rb).audio.speech.with_streaming_response.create(
            model="tts-1", voice="synthetic", input=TEXT, response_format="pcm",
            extra_body={"stream": True, "stream_format": "audio", "vendor_flag": 1},
        ) as response:
            assert response.headers["x-sample-rate"] == "24000"
            assert response.headers["content-type"] == "audio/pcm"
            assert response.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in response.headers
            assert response.headers["x-ignored-fields"] == "vendor_flag"
            chunks = response.iter_bytes()
            first = await anext(chunks)
            # Streamed as rendered: audio is here while the engine (real time) is still speaking.
            assert first and engine.busy_slots == 1
            body = first + b"".join([chunk async for chunk in chunks])
    audio = pcm16(body)
    assert audio.size / 24000 == pytest.approx(len(TEXT) * SPC, abs=0.002)
    assert rms_db(audio) > -30


@pytest.mark.slow
async def test_wav_is_a_streamed_24khz_16bit_mono_wav() -> None:
    async with running_bridge(SyntheticEngine(sample_rate=22050), api_key=KEY) as rb:
        body, headers = await stream_speech(rb, response_format="wav")
    assert headers["content-type"] == "audio/wav" and headers["x-sample-rate"] == "24000"
    riff_size, data_size = struct.unpack("<I", body[4:8])[0], struct.unpack("<I", body[40:44])[0]
    assert (riff_size, data_size) == (0xFFFFFFFF, 0xFFFFFFFF)  # length unknown when it left
    with wave.open(io.BytesIO(body)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
        frames = wav.readframes(10**7)  # the header's size is "unknown": read what is there
    assert frames == body[44:]
    audio = pcm16(frames)
    assert audio.size / 24000 == pytest.approx(len(TEXT) * SPC, abs=0.002)
    assert rms_db(audio) > -30


@pytest.mark.slow
async def test_mulaw_is_8khz_g711() -> None:
    async with running_bridge(SyntheticEngine(sample_rate=22050), api_key=KEY) as rb:
        body, headers = await stream_speech(rb, response_format="mulaw", voice={"id": "synthetic"})
    assert headers["content-type"] == "audio/basic" and headers["x-sample-rate"] == "8000"
    # The encoder's last frame is padded to 20 ms: at most 160 bytes more than the speech.
    assert 0 <= len(body) - len(TEXT) * SPC * 8000 <= 160
    decoded = mulaw_to_pcm16(body) / 32768.0
    assert rms_db(decoded) > -30


@pytest.mark.slow
async def test_speed_is_passed_to_the_engine_through_the_preset() -> None:
    async with running_bridge(SyntheticEngine(), api_key=KEY) as rb:
        body, _ = await stream_speech(rb, response_format="pcm", speed=2.0)
    assert len(body) / 2 / 24000 == pytest.approx(len(TEXT) * SPC / 2.0, abs=0.002)


@pytest.mark.slow
async def test_long_input_is_cut_into_segments_and_stays_one_seamless_stream() -> None:
    """Every segment goes through the same resampler: the output equals resampling the engine's
    whole audio in one pass (a resampler flushed or restarted per segment differs at each seam)."""
    text = " ".join(f"Sentence number {i} goes on for a while, with a clause or two, and ends."
                    for i in range(12))
    preset = load_presets().get("balanced")
    segments = segment_text(text, preset.segmentation)
    assert len(segments) >= 3
    reference_engine = SyntheticEngine(sample_rate=22050)
    reference = Pcm16Encoder(22050, 24000)
    expected = b""
    for segment in segments:
        async for chunk in reference_engine.stream(SpeechRequest(segment, "synthetic", preset)):
            expected += reference.push(chunk)
    expected += reference.flush()

    engine = SyntheticEngine(sample_rate=22050)
    async with running_bridge(engine, api_key=KEY) as rb:
        body, _ = await stream_speech(rb, input=text, response_format="pcm")
    assert engine.stats.utterances == len(segments)
    assert body == expected


@pytest.mark.slow
async def test_sse_stream_format_sends_base64_deltas_then_done() -> None:
    async with running_bridge(SyntheticEngine(), api_key=KEY) as rb:
        body, headers = await stream_speech(rb, response_format="pcm", stream_format="sse")
    assert headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in body.decode().split("\n\n") if line]
    assert [e["type"] for e in events[-1:]] == ["speech.audio.done"]
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(audio) / 2 / 24000 == pytest.approx(len(TEXT) * SPC, abs=0.002)


@pytest.mark.slow
async def test_piper_pcm_is_resampled_from_22050_to_24000() -> None:
    """The embedded voice speaks 22.05 kHz; the pcm contract is 24 kHz. Piper's durations vary
    from run to run, so the engine's own output for this very request is counted."""

    class CountingPiper(PiperEngine):  # spy: the native samples the bridge received
        native_samples = 0

        async def _stream(self, request: SpeechRequest) -> AsyncIterator[np.ndarray]:
            async for chunk in super()._stream(request):
                self.native_samples += chunk.size
                yield chunk

    engine = CountingPiper()
    async with running_bridge(engine, api_key=KEY) as rb:
        body, headers = await stream_speech(rb, voice="joe", input="Hello from the bridge.",
                                            response_format="pcm")
    assert engine.sample_rate == 22050 and headers["x-sample-rate"] == "24000"
    native_s = engine.native_samples / 22050
    assert native_s > 0.5
    assert len(body) / 2 / 24000 == pytest.approx(native_s, abs=0.002)
    assert rms_db(pcm16(body)) > -35


@pytest.mark.slow
async def test_a_stored_voice_is_spoken_by_a_cloning_engine(tmp_path: Path) -> None:
    write_wav(tmp_path / "alice.wav")
    async with running_bridge(SyntheticEngine(), api_key=KEY, voices_dir=tmp_path) as rb:
        body, _ = await stream_speech(rb, voice="alice", response_format="pcm",
                                      instructions="ignored: no engine here takes instructions")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
            voices = (await http.get(f"{rb.base_url}/v1/audio/voices")).json()
    assert len(body) / 2 / 24000 == pytest.approx(len(TEXT) * SPC, abs=0.002)
    assert {v["id"] for v in voices["data"]} == {"synthetic", "alice"}


@pytest.mark.slow
async def test_a_stored_voice_on_an_engine_that_cannot_clone_is_a_400(tmp_path: Path) -> None:
    class NoCloning(SyntheticEngine):
        supports_cloning = False

    write_wav(tmp_path / "alice.wav")
    async with running_bridge(NoCloning(), api_key=KEY, voices_dir=tmp_path) as rb:
        with pytest.raises(openai.BadRequestError) as refused:
            await client(rb).audio.speech.create(model="tts-1", voice="alice", input=TEXT)
    assert refused.value.param == "voice" and refused.value.code == "unsupported_voice"


# ---- access -------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_api_key_is_required_and_checked() -> None:
    async with running_bridge(SyntheticEngine(), api_key=KEY) as rb:
        for key in (None, "wrong-key"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with httpx.AsyncClient() as http:
                response = await http.post(f"{rb.base_url}/v1/audio/speech", headers=headers,
                                           json={"model": "tts-1", "input": "hi"})
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"].startswith("Bearer")
        with pytest.raises(openai.AuthenticationError) as refused:
            await client(rb, key="wrong-key").models.list()
        assert refused.value.code == "invalid_api_key"
        body, _ = await stream_speech(rb, response_format="pcm")
        assert body


@pytest.mark.slow
async def test_without_a_key_v1_is_refused_unless_insecure_dev() -> None:
    async with running_bridge(SyntheticEngine(), api_key=None) as rb, httpx.AsyncClient() as http:
        response = await http.get(f"{rb.base_url}/v1/models")
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "api_disabled" and "VOICE_BRIDGE_API_KEY" in error["message"]
    async with running_bridge(SyntheticEngine(), twilio_auth_token=None, insecure_dev=True,
                              api_key=None) as rb:
        body, _ = await stream_speech(rb, response_format="pcm")
        assert body


@pytest.mark.slow
async def test_models_lists_openai_model_objects() -> None:
    async with running_bridge(SyntheticEngine(), api_key=KEY) as rb:
        models = [m async for m in client(rb).models.list()]
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
            raw = (await http.get(f"{rb.base_url}/v1/models")).json()
    assert raw["object"] == "list"
    assert {"tts-1", "synthetic"} <= {m.id for m in models}
    for model in raw["data"]:
        assert model["object"] == "model" and model["owned_by"] == "voice-bridge"
        assert isinstance(model["created"], int)


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "error_class", "param"),
    [
        ({"input": ""}, openai.BadRequestError, "input"),
        ({"input": "   \n"}, openai.BadRequestError, "input"),
        ({"input": "a" * 5000}, openai.BadRequestError, "input"),
        ({"voice": "nobody"}, openai.NotFoundError, "voice"),
        ({"voice": "../etc/passwd"}, openai.BadRequestError, "voice"),
        ({"response_format": "mp3"}, openai.BadRequestError, "response_format"),
        ({"response_format": "ogg"}, openai.BadRequestError, "response_format"),
        ({"speed": 9}, openai.BadRequestError, "speed"),
        ({"stream_format": "chunks"}, openai.BadRequestError, "stream_format"),
    ],
)
async def test_bad_requests_get_openai_errors(params: dict[str, object], error_class: type,
                                              param: str) -> None:
    engine = SyntheticEngine()
    async with running_bridge(engine, api_key=KEY) as rb:
        with pytest.raises(error_class) as refused:
            await client(rb).audio.speech.create(**{  # type: ignore[call-overload]
                "model": "tts-1", "voice": "synthetic", "input": TEXT, **params})
    error = refused.value
    assert error.param == param
    assert error.type == ("not_found_error" if error_class is openai.NotFoundError
                          else "invalid_request_error")
    assert isinstance(error.body, dict) and set(error.body) == {"message", "type", "param", "code"}
    assert engine.stats.utterances == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"input": "hi"}', 400, "missing_required_parameter"),
        (json.dumps({"model": "m", "input": "x" * 70_000}).encode(), 413, "request_too_large"),
    ],
)
async def test_malformed_bodies_get_openai_errors(content: bytes, status: int, code: str) -> None:
    async with running_bridge(SyntheticEngine(), api_key=KEY) as rb, httpx.AsyncClient() as http:
        response = await http.post(f"{rb.base_url}/v1/audio/speech", content=content,
                                   headers={"Authorization": f"Bearer {KEY}",
                                            "Content-Type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.slow
async def test_body_over_the_limit_is_refused_without_a_content_length() -> None:
    """A chunked upload has no length to check up front: it is cut off while being read."""

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):  # 1 MB if nobody stopped reading
            yield b" " * 1024

    async with running_bridge(SyntheticEngine(), api_key=KEY) as rb, httpx.AsyncClient() as http:
        response = await http.post(f"{rb.base_url}/v1/audio/speech", content=endless(),
                                   headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


# ---- failures and cancellation ----------------------------------------------------------------
class FailingEngine(SyntheticEngine):
    """Stand-in engine that fails after ``good_chunks`` chunks."""

    def __init__(self, good_chunks: int) -> None:
        super().__init__()
        self.good_chunks = good_chunks

    async def _stream(self, request: SpeechRequest) -> AsyncIterator[np.ndarray]:
        sent = 0
        async for chunk in super()._stream(request):
            if sent == self.good_chunks:
                raise EngineError("stand-in engine failure")
            sent += 1
            yield chunk


@pytest.mark.slow
async def test_engine_failure_before_audio_is_a_502_json_error() -> None:
    async with running_bridge(FailingEngine(good_chunks=0), api_key=KEY) as rb:
        with pytest.raises(openai.InternalServerError) as failed:
            await client(rb).audio.speech.create(model="tts-1", voice="synthetic", input=TEXT,
                                                 response_format="pcm")
    assert failed.value.status_code == 502
    assert failed.value.code == "engine_error" and failed.value.type == "server_error"


@pytest.mark.slow
async def test_engine_failure_mid_stream_aborts_the_body() -> None:
    """Headers are gone, so the status cannot say it: the body is cut without its final chunk,
    which a client sees as an error, never as complete (shorter) audio."""
    async with running_bridge(FailingEngine(good_chunks=3), api_key=KEY) as rb:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
            async with http.stream("POST", f"{rb.base_url}/v1/audio/speech",
                                   json={"model": "tts-1", "input": TEXT,
                                         "response_format": "pcm"}) as response:
                assert response.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):
                    async for _ in response.aiter_bytes():
                        pass


async def raw_connection(rb: RunningBridge, rcvbuf: int | None = None) -> socket.socket:
    """A loopback socket to the bridge (optionally with a tiny receive buffer: a client that
    stops reading fills it at once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", rb.settings.port))
    return sock


@pytest.mark.slow
async def test_a_client_that_stops_reading_is_cut_off_and_the_synthesis_cancelled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AudioStreamResponse, "send_stall_timeout_s", 0.3)
    engine = SyntheticEngine()  # instant: it renders as fast as the connection takes the audio
    text = ("A long sentence that fills every buffer between the bridge and a client. " * 60)[:4096]
    body = json.dumps({"model": "tts-1", "input": text, "response_format": "pcm"}).encode()
    async with running_bridge(engine, api_key=KEY) as rb:
        sock = await raw_connection(rb, rcvbuf=4096)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, (
                f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body)
            # ~12 MB of pcm; the client reads none of it, so the server's sends stall.
            await eventually(lambda: engine.busy_slots == 0 and engine.stats.cancelled == 1,
                             timeout=15.0)
        finally:
            sock.close()


@pytest.mark.slow
async def test_a_body_that_trickles_in_gets_a_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech_api, "BODY_TIMEOUT_S", 0.3)
    async with running_bridge(SyntheticEngine(), api_key=KEY) as rb:
        sock = await raw_connection(rb)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(sock, (
                f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                "Content-Length: 100\r\n\r\n{\"model\": "
            ).encode())  # and then nothing
            reply = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5.0)
        finally:
            sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b'"request_timeout"' in reply


@pytest.mark.slow
async def test_requests_beyond_the_in_flight_limit_get_a_429_and_places_are_given_back() -> None:
    engine = SyntheticEngine(first_chunk_delay_s=60.0)
    async with running_bridge(engine, api_key=KEY, engine_concurrency=1) as rb:
        limit = max(8, speech_api.IN_FLIGHT_PER_SLOT * 1)
        waiting = [asyncio.create_task(client(rb).audio.speech.create(
            model="tts-1", voice="synthetic", input=TEXT, response_format="pcm"))
            for _ in range(limit)]
        await eventually(lambda: engine.busy_slots == limit)
        with pytest.raises(openai.RateLimitError) as refused:
            await client(rb).audio.speech.create(model="tts-1", voice="synthetic", input=TEXT)
        assert refused.value.code == "server_busy"
        assert refused.value.response.headers["retry-after"] == "1"
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await eventually(lambda: engine.busy_slots == 0)
        engine.first_chunk_delay_s = 0.0
        # Every place comes back, whichever way a request ends: more than the limit in a row.
        for _ in range(limit + 1):
            with pytest.raises(openai.BadRequestError):
                await client(rb).audio.speech.create(model="tts-1", voice="synthetic", input=" ")
        for _ in range(limit + 1):
            body, _ = await stream_speech(rb, response_format="pcm")
            assert body


@pytest.mark.slow
async def test_client_disconnect_mid_body_cancels_the_synthesis() -> None:
    engine = SyntheticEngine(realtime_factor=1.0)  # ~12 s of speech, spoken in real time
    text = "This sentence is long enough to keep a real time engine busy for a while. " * 3
    async with running_bridge(engine, api_key=KEY) as rb:
        async with client(rb).audio.speech.with_streaming_response.create(
            model="tts-1", voice="synthetic", input=text, response_format="pcm",
        ) as response:
            got = await anext(response.iter_bytes())
            assert got and engine.busy_slots == 1
        # Leaving the block closed the connection mid-body.
        await eventually(lambda: engine.busy_slots == 0 and engine.stats.cancelled == 1, timeout=3.0)
    assert engine.stats.utterances == 1  # no later segment was started


@pytest.mark.slow
async def test_client_disconnect_before_the_first_byte_cancels_the_synthesis() -> None:
    engine = SyntheticEngine(first_chunk_delay_s=60.0)
    async with running_bridge(engine, api_key=KEY) as rb:
        request = asyncio.create_task(client(rb).audio.speech.create(
            model="tts-1", voice="synthetic", input=TEXT, response_format="pcm"))
        await eventually(lambda: engine.busy_slots == 1)
        request.cancel()
        await eventually(lambda: engine.busy_slots == 0 and engine.stats.cancelled == 1, timeout=3.0)
        with pytest.raises(asyncio.CancelledError):
            await request
