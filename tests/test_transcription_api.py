"""``POST /v1/audio/transcriptions`` served by the bridge's embedded recogniser, driven by the official
``openai`` client with real human speech (tests/data/speech, 8 kHz μ-law, converted to WAV here)."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import numpy as np
import openai
import pytest
import soxr

from telephony import transcription_api
from telephony.speech_api import InFlight
from telephony.testing.bridge_harness import running_bridge
from tests.conftest import eventually, speech_clip, wav_bytes
from tts_core.audio.mulaw import mulaw_to_pcm16
from tts_core.audio.wav_file import read_wav
from tts_core.stt import Recogniser, Transcript
from tts_core.stt.wer import normalise, word_errors

API_KEY = "sk-transcribe-test"
GO_FORWARD = "go forward ten meters"
ILL_DISPOSED = "he was not an ill disposed young man"


def clip_wav(name: str, rate: int = 8000, channels: int = 1, width: int = 2) -> bytes:
    """A speech clip as a WAV file at ``rate`` with ``channels`` identical channels."""
    samples = mulaw_to_pcm16(speech_clip(name)).astype(np.float32) / 32768
    if rate != 8000:
        samples = soxr.resample(samples, 8000, rate).astype(np.float32)
    return wav_bytes(samples, rate, width=width, channels=channels)



def client_for(base_url: str, key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.mark.slow
async def test_the_openai_client_transcribes_real_speech(recogniser: Recogniser) -> None:
    async with running_bridge(stt="local", recogniser=recogniser, api_key=API_KEY) as rb:
        client = client_for(rb.base_url)
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("go.wav", clip_wav("go_forward_ten_meters"), "audio/wav"))
        assert normalise(result.text) == normalise(GO_FORWARD), result.text
        # 44.1 kHz stereo 32-bit, plain text back, with a language and an ignored prompt.
        text = await client.audio.transcriptions.create(
            model="anything", language="en", response_format="text", prompt="ignored",
            file=("ill.wav", clip_wav("he_was_not_an_ill_disposed_young_man", 44100, 2, 4)))
        assert word_errors(ILL_DISPOSED, text)[0] <= 1, text
        verbose = await client.audio.transcriptions.create(
            model="whisper-1", response_format="verbose_json",
            file=("go.wav", clip_wav("go_forward_ten_meters", 16000)))
        assert normalise(verbose.text) == normalise(GO_FORWARD)
        assert verbose.language == "english" and 1.0 < verbose.duration < 5.0
        assert verbose.segments and verbose.segments[0].text == verbose.text
        raw = await client.audio.transcriptions.with_raw_response.create(
            model="whisper-1", prompt="x", temperature=0.0,
            file=("go.wav", clip_wav("go_forward_ten_meters")))
        assert raw.headers["x-ignored-fields"] == "prompt,temperature"


@pytest.mark.slow
async def test_api_key_rules(recogniser: Recogniser) -> None:
    wav = clip_wav("go_forward_ten_meters")
    async with running_bridge(stt="local", recogniser=recogniser, api_key=API_KEY) as rb:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client_for(rb.base_url, "sk-wrong").audio.transcriptions.create(
                model="whisper-1", file=("a.wav", wav))
        assert refused.value.status_code == 401
        assert refused.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    # No key configured and no --insecure-dev: the API is off.
    async with running_bridge(stt="local", recogniser=recogniser, api_key=None) as rb:
        with pytest.raises(openai.PermissionDeniedError) as off:
            await client_for(rb.base_url).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
        assert off.value.body["code"] == "api_disabled"  # type: ignore[index]
    # With recognition off, a clear 503 rather than a crash.
    async with running_bridge(stt="off", api_key=API_KEY) as rb:
        with pytest.raises(openai.InternalServerError) as disabled:
            await client_for(rb.base_url).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
        assert disabled.value.status_code == 503
        assert disabled.value.body["code"] == "stt_disabled"  # type: ignore[index]


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


@pytest.mark.slow
async def test_bad_uploads_get_openai_shaped_4xx(recogniser: Recogniser) -> None:
    wav = clip_wav("go_forward_ten_meters")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with running_bridge(stt="local", recogniser=recogniser, api_key=API_KEY) as rb, \
            httpx.AsyncClient(base_url=f"{rb.base_url}/v1", headers=auth, timeout=30) as http:
        url = "/audio/transcriptions"
        error = assert_openai_error(await http.post(url, data={"model": "whisper-1"}), 400,
                                    "missing_required_parameter")
        assert error["param"] == "file"
        error = assert_openai_error(await http.post(url, files={"file": ("a.wav", wav)}), 400,
                                    "missing_required_parameter")
        assert error["param"] == "model"
        mp3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(2000)
        error = assert_openai_error(await http.post(url, data={"model": "m"}, files={"file": ("a.mp3", mp3)}),
                                    400, "unsupported_file_format")
        assert "mp3" in error["message"] and "WAV" in error["message"]
        assert_openai_error(await http.post(url, data={"model": "m"}, files={"file": ("a.txt", b"hello")}),
                            400, "unsupported_file_format")
        assert_openai_error(await http.post(url, data={"model": "m"}, files={"file": ("a.wav", b"")}),
                            400, "invalid_value")
        assert_openai_error(await http.post(url, data={"model": "m"}, files={
            "file": ("a.wav", wav_bytes(np.zeros(400, np.float32), 8000))}), 400, "audio_too_short")
        assert_openai_error(await http.post(url, data={"model": "m", "response_format": "srt"},
                                            files={"file": ("a.wav", wav)}), 400, "unsupported_value")
        assert_openai_error(await http.post(url, data={"model": "m", "language": "english!"},
                                            files={"file": ("a.wav", wav)}), 400, "invalid_value")
        assert_openai_error(await http.post(url, json={"model": "m"}), 400, "invalid_content_type")
        assert_openai_error(await http.get(url), 405, "method_not_allowed")  # reachable, not the catch-all


@pytest.mark.slow
async def test_a_declared_oversize_upload_is_refused_before_its_body_is_read(recogniser: Recogniser) -> None:
    async with running_bridge(stt="local", recogniser=recogniser, api_key=API_KEY) as rb:
        port = int(rb.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = transcription_api.MAX_FILE_BYTES + transcription_api.FORM_OVERHEAD_BYTES + 1
        writer.write(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}"
                     f"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {size}\r\n\r\n"
                     .encode())
        await writer.drain()
        # Not one byte of the body is sent: the answer must come anyway.
        status_line = await asyncio.wait_for(reader.readline(), 10)
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        writer.close()


@pytest.mark.slow
async def test_an_upload_growing_past_the_cap_is_cut_off(recogniser: Recogniser,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transcription_api, "MAX_FILE_BYTES", 200_000)
    async with running_bridge(stt="local", recogniser=recogniser, api_key=API_KEY) as rb:
        port = int(rb.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Chunked: no Content-Length to refuse up front. 320 kB of a file, then the client waits.
        writer.write(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     f"{API_KEY}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        head = (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n')
        for chunk in [head] + [bytes(32768)] * 10:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        raw = await asyncio.wait_for(reader.read(4096), 10)
        assert b'"file_too_large"' in raw and b"200000" in raw
        writer.close()


def test_wav_reader_takes_common_encodings() -> None:
    tone = (0.5 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)).astype(np.float32)
    for width in (2, 4):
        samples, rate = read_wav(wav_bytes(tone, 8000, width=width, channels=2))
        assert rate == 8000 and np.max(np.abs(samples - tone)) < 1e-3
    # streamed WAV (sizes 0xFFFFFFFF), float32, after a LIST chunk
    fmt = b"fmt " + (16).to_bytes(4, "little") + np.array([3, 1], "<u2").tobytes() \
        + np.array([16000, 64000], "<u4").tobytes() + np.array([4, 32], "<u2").tobytes()
    streamed = (b"RIFF\xff\xff\xff\xffWAVE" + fmt + b"LIST\x04\x00\x00\x00INFO" + b"data\xff\xff\xff\xff"
                + tone.astype("<f4").tobytes())
    samples, rate = read_wav(streamed)
    assert rate == 16000 and np.array_equal(samples, tone)


def test_a_mulaw_wav_as_phones_record_it_decodes_to_the_same_samples() -> None:
    mulaw = speech_clip("go_forward_ten_meters")
    fmt = b"fmt " + (18).to_bytes(4, "little") + np.array([7, 1], "<u2").tobytes() \
        + np.array([8000, 8000], "<u4").tobytes() + np.array([1, 8, 0], "<u2").tobytes()
    data = b"data" + len(mulaw).to_bytes(4, "little") + mulaw
    wav = b"RIFF" + (4 + len(fmt) + len(data)).to_bytes(4, "little") + b"WAVE" + fmt + data
    samples, rate = read_wav(wav)
    assert rate == 8000
    assert np.array_equal(samples, mulaw_to_pcm16(mulaw).astype(np.float32) / 32768)


def test_long_audio_is_cut_into_windows_at_quiet_moments() -> None:
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal(16000 * 70)).astype(np.float32)
    quiet = [27 * 16000, 55 * 16000]  # a 100 ms pause inside each piece's last 5 s
    for q in quiet:
        audio[q: q + 1600] *= 0.001
    pieces = transcription_api.split_pieces(audio)
    assert pieces[0][0] == 0 and pieces[-1][1] == audio.size
    assert all(end - start <= 30 * 16000 for start, end in pieces)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    for (_, cut), q in zip(pieces, quiet, strict=False):
        assert q <= cut < q + 1600, (cut, q)
    assert transcription_api.split_pieces(audio[: 16000 * 30]) == [(0, 16000 * 30)]


class StuckRecogniser(Recogniser):
    """Never finishes a decode; records that it was given up."""

    name = "stuck"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def load(self) -> None:
        pass

    async def transcribe(self, audio: np.ndarray, *, language: str | None = None,
                         deadline: float | None = None) -> Transcript:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")


@pytest.mark.slow
async def test_a_client_that_leaves_cancels_its_recognition(monkeypatch: pytest.MonkeyPatch) -> None:
    limiters: list[InFlight] = []

    class RecordedInFlight(InFlight):
        def __init__(self, limit: int) -> None:
            super().__init__(limit)
            limiters.append(self)

    monkeypatch.setattr(transcription_api, "InFlight", RecordedInFlight)
    stuck = StuckRecogniser()
    async with running_bridge(stt="local", recogniser=stuck, api_key=API_KEY) as rb, \
            httpx.AsyncClient(timeout=30) as http:
        request = asyncio.create_task(http.post(
            f"{rb.base_url}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {API_KEY}"},
            data={"model": "m"}, files={"file": ("a.wav", clip_wav("go_forward_ten_meters"))}))
        await asyncio.wait_for(stuck.started.wait(), 10)
        request.cancel()  # the client gives up: its connection closes
        await asyncio.wait_for(stuck.cancelled.wait(), 5)
        # its place is given back: the limit does not fill up with abandoned requests
        await eventually(lambda: limiters[0].count == 0)
