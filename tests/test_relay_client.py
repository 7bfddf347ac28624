"""RelayAgent against a real loopback WebSocket server playing the agent application."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.server import ServerConnection, serve

from telephony.agents.audio_fetch import AudioFetchError, decode_wav, fetch_audio
from telephony.agents.base import AgentError, CallInfo, SpeechOutcome, SpeechResult
from telephony.agents.play_budget import PlayBudget
from telephony.agents.relay.dispatch import dispatch_frame
from telephony.agents.relay.play_loader import MAX_CONCURRENT_DOWNLOADS
from telephony.agents.relay.session import RelaySession
from telephony.agents.relay.speech_jobs import MAX_PENDING_JOBS, SNIPPET_CHARS, ready
from telephony.agents.relay.text_replies import MAX_TURN_CHARS
from telephony.agents.relay_client import RelayAgent
from telephony.egress import EgressPolicy
from tests.conftest import eventually, wav_bytes
from tts_core.audio import pcm16_to_mulaw
from tts_core.errors import Forbidden, UpstreamFailed

AUTH_TOKEN = "12345678901234567890123456789012"
LOOPBACK = EgressPolicy(allow_hosts=frozenset({"127.0.0.1"}))
"""The agent apps here listen on loopback, which the bridge refuses unless allow-listed."""
WAIT_S = 3.0


# ---- fakes ----------------------------------------------------------------------------------------
class FakeCall:
    """Records what the agent asks of the call; ``say`` consumes streamed tokens fully."""

    def __init__(self, say_delay_s: float = 0.0) -> None:
        self.info = CallInfo(
            call_sid="CA" + "1" * 32,
            stream_sid="MZ" + "2" * 32,
            account_sid="AC" + "3" * 32,
            from_number="+15550100",
            to_number="+15550101",
            direction="inbound",
            custom_parameters={"customer": "42"},
        )
        self.say_delay_s = say_delay_s
        self.cut_after_tokens: int | None = None
        self.events: list[tuple[Any, ...]] = []
        self.outcome = SpeechOutcome.PLAYED
        self.ended = asyncio.Event()
        self.loops: list[int] = []
        self.play_gate = asyncio.Event()
        """Plays "play" until this is set (set by default): a test holds plays to fill the budget."""
        self.play_gate.set()

    async def say(
        self, text: str | AsyncIterator[str], *, interruptible: bool = True, preemptible: bool = False
    ) -> SpeechResult:
        if isinstance(text, str):
            self.events.append(("say", text, interruptible, preemptible))
            spoken = text
        else:
            record: list[Any] = ["say-stream", [], interruptible, preemptible]
            self.events.append(tuple(record))
            index = len(self.events) - 1
            async for token in text:
                record[1].append(token)
                if self.cut_after_tokens is not None and len(record[1]) >= self.cut_after_tokens:
                    self.events[index] = tuple(record)
                    self.events.append(("interrupted", "".join(record[1])))
                    return SpeechResult("".join(record[1]), SpeechOutcome.INTERRUPTED)
            self.events[index] = tuple(record)
            spoken = "".join(record[1])
        await asyncio.sleep(self.say_delay_s)
        self.events.append(("played", spoken))
        if self.outcome is SpeechOutcome.FAILED:
            return SpeechResult(spoken, SpeechOutcome.FAILED, error="engine exploded")
        return SpeechResult(spoken, self.outcome)

    async def play_audio(
        self, audio: np.ndarray, sample_rate: int, *, label: str = "audio", interruptible: bool = True,
        preemptible: bool = False, loops: int = 1,
    ) -> SpeechResult:
        self.events.append(("play", audio, sample_rate, label, interruptible))
        self.loops.append(loops)
        await self.play_gate.wait()
        return SpeechResult(label, SpeechOutcome.PLAYED)

    async def end(self, reason: str = "agent ended") -> None:
        self.events.append(("end", reason))
        self.ended.set()

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


class AgentApp:
    """The remote agent application: a loopback ConversationRelay server."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.headers: dict[str, str] = {}
        self.path = ""
        self.conn: ServerConnection | None = None
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.url = ""

    async def handler(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.headers = dict(conn.request.headers)
        self.path = conn.request.path
        self.connected.set()
        try:
            async for raw in conn:
                await self.received.put(json.loads(raw))
        finally:
            self.closed.set()

    async def send(self, message: dict[str, Any] | str) -> None:
        assert self.conn is not None
        await self.conn.send(message if isinstance(message, str) else json.dumps(message))

    async def next(self, kind: str | None = None) -> dict[str, Any]:
        message = await asyncio.wait_for(self.received.get(), WAIT_S)
        if kind is not None:
            assert message["type"] == kind, message
        return message


@pytest.fixture
async def app() -> AsyncIterator[AgentApp]:
    agent_app = AgentApp()
    async with serve(agent_app.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        agent_app.url = f"ws://127.0.0.1:{port}/relay"
        yield agent_app



def mulaw_wav_bytes(pcm: np.ndarray, rate: int = 8000) -> bytes:
    data = pcm16_to_mulaw(pcm)
    fmt = struct.pack("<HHIIHH", 7, 1, rate, rate, 1, 8) + b"\x00\x00"
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"fact" + struct.pack("<II", 4, len(data))
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def media_client(routes: dict[str, tuple[int, bytes]]) -> httpx.AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        status, body = routes.get(str(request.url), (404, b"not found"))
        return httpx.Response(status, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def started(
    app: AgentApp, call: FakeCall, http: httpx.AsyncClient | None = None, **kwargs: Any
) -> RelayAgent:
    agent = RelayAgent(
        app.url, auth_token=kwargs.pop("auth_token", AUTH_TOKEN),
        http_client=http or media_client({}), egress=kwargs.pop("egress", LOOPBACK), **kwargs,
    )
    await agent.on_start(call)
    await app.next("setup")
    return agent


# ---- connection and setup -------------------------------------------------------------------------
async def test_setup_message_and_signed_handshake(app: AgentApp) -> None:
    call = FakeCall()
    agent = RelayAgent(app.url, auth_token=AUTH_TOKEN, http_client=media_client({}), egress=LOOPBACK)
    await agent.on_start(call)
    setup = await app.next("setup")
    assert setup["sessionId"].startswith("VX") and len(setup["sessionId"]) == 34
    assert setup["callSid"] == call.info.call_sid
    assert setup["accountSid"] == call.info.account_sid
    assert setup["from"] == "+15550100"
    assert setup["to"] == "+15550101"
    assert setup["direction"] == "inbound"
    assert setup["customParameters"] == {"customer": "42"}
    assert setup["callType"] == "PSTN"
    assert setup["callStatus"] == "IN-PROGRESS"
    signature = app.headers.get("X-Twilio-Signature") or app.headers.get("x-twilio-signature")
    assert signature
    assert RequestValidator(AUTH_TOKEN).validate(app.url, {}, signature)
    assert not RequestValidator("wrong" + AUTH_TOKEN[5:]).validate(app.url, {}, signature)
    await agent.on_stop(call)


async def test_no_signature_without_auth_token(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call, auth_token=None)
    assert not any(k.lower() == "x-twilio-signature" for k in app.headers)
    await agent.on_stop(call)


async def test_connect_refused_raises_agent_error_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = RelayAgent(f"ws://127.0.0.1:{port}/x", auth_token=None, http_client=media_client({}),
                       egress=LOOPBACK)
    t0 = time.monotonic()
    with pytest.raises(AgentError, match="cannot connect") as info:
        await agent.on_start(FakeCall())
    assert time.monotonic() - t0 < 2.0
    assert isinstance(info.value, UpstreamFailed) and info.value.ws_close_code == 1011
    await agent.on_stop(FakeCall())


async def test_an_agent_url_the_egress_policy_refuses_is_a_forbidden_agent_error() -> None:
    agent = RelayAgent("ws://127.0.0.1:9/x", auth_token=None, http_client=media_client({}),
                       egress=EgressPolicy())  # the default policy: loopback is not a public address
    with pytest.raises(AgentError, match="agent URL refused") as info:
        await agent.on_start(FakeCall())
    assert isinstance(info.value, Forbidden) and info.value.http_status == 403
    await agent.on_stop(FakeCall())


@pytest.mark.slow
async def test_connect_timeout_raises_agent_error() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # accepts TCP but never answers the WebSocket handshake
    try:
        port = server.getsockname()[1]
        agent = RelayAgent(
            f"ws://127.0.0.1:{port}/x", auth_token=None, http_client=media_client({}),
            connect_timeout_s=0.3, egress=LOOPBACK,
        )
        t0 = time.monotonic()
        with pytest.raises(AgentError):
            await agent.on_start(FakeCall())
        assert time.monotonic() - t0 < 2.0
    finally:
        server.close()


# ---- text -----------------------------------------------------------------------------------------
async def test_streamed_tokens_are_one_turn_in_order(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call)
    tokens = ["Hello", " there", ",", " how", " can", " I", " help?"]
    for token in tokens[:-1]:
        await app.send({"type": "text", "token": token, "last": False})
    await app.send({"type": "text", "token": tokens[-1], "last": True, "interruptible": False})
    await eventually(lambda: ("played", "".join(tokens)) in call.events)
    says = [e for e in call.events if e[0].startswith("say")]
    assert says == [("say-stream", tokens, True, False)]  # flags come from the turn's first token
    await agent.on_stop(call)


async def test_two_turns_are_two_says(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call)
    await app.send({"type": "text", "token": "One", "last": False})
    await app.send({"type": "text", "token": " turn.", "last": True})
    await app.send({"type": "text", "token": "Second", "last": False, "preemptible": True})
    await app.send({"type": "text", "token": " turn.", "last": True})
    await eventually(lambda: call.kinds().count("played") == 2)
    says = [e for e in call.events if e[0].startswith("say")]
    assert says == [
        ("say-stream", ["One", " turn."], True, False),
        ("say-stream", ["Second", " turn."], True, True),
    ]
    await agent.on_stop(call)


async def test_single_last_message_is_a_plain_string_say(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call)
    await app.send({"type": "text", "token": "Thanks for calling.", "last": True})
    await eventually(lambda: "played" in call.kinds())
    assert call.events[0] == ("say", "Thanks for calling.", True, False)
    await agent.on_stop(call)


async def test_tokens_of_an_interrupted_turn_are_dropped_until_it_ends(app: AgentApp) -> None:
    call = FakeCall()
    call.cut_after_tokens = 2
    agent = await started(app, call)
    await app.send({"type": "text", "token": "Let me", "last": False})
    await app.send({"type": "text", "token": " explain", "last": False})
    await eventually(lambda: "interrupted" in call.kinds())
    call.cut_after_tokens = None
    await app.send({"type": "text", "token": " the whole", "last": False})  # stale: dropped
    await app.send({"type": "text", "token": " story.", "last": True})  # stale; ends the turn
    await app.send({"type": "text", "token": "Sure.", "last": True})
    await eventually(lambda: ("played", "Sure.") in call.events)
    says = [e[:2] for e in call.events if e[0].startswith("say")]
    assert says == [("say-stream", ["Let me", " explain"]), ("say", "Sure.")]
    # what was dropped is reported once, never lost silently
    errors = [m["description"] for m in _pending(app) if m["type"] == "error"]
    assert errors == ["not spoken, the reply was interrupted: 'the whole story.'"]
    await agent.on_stop(call)


async def test_caller_event_starts_a_new_turn_after_an_interrupted_one(app: AgentApp) -> None:
    call = FakeCall()
    call.cut_after_tokens = 1
    agent = await started(app, call)
    await app.send({"type": "text", "token": "Long answer", "last": False})
    await eventually(lambda: "interrupted" in call.kinds())
    call.cut_after_tokens = None
    await agent.on_caller_speech(call, "stop, just tell me the time", True)
    assert (await app.next("prompt"))["voicePrompt"] == "stop, just tell me the time"
    await app.send({"type": "text", "token": "It is", "last": False})
    await app.send({"type": "text", "token": " noon.", "last": True})
    await eventually(lambda: ("played", "It is noon.") in call.events)
    await agent.on_stop(call)


def _pending(app: AgentApp) -> list[dict[str, Any]]:
    items = []
    while not app.received.empty():
        items.append(app.received.get_nowait())
    return items


async def test_failed_speech_is_reported_to_agent(app: AgentApp) -> None:
    call = FakeCall()
    call.outcome = SpeechOutcome.FAILED
    agent = await started(app, call)
    await app.send({"type": "text", "token": "This will not work.", "last": True})
    error = await app.next("error")
    assert "This will not work." in error["description"]
    assert "engine exploded" in error["description"]
    await agent.on_stop(call)


# ---- events to the agent ----------------------------------------------------------------------------
async def test_dtmf_interrupt_prompt_forwarded_with_exact_fields(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call)
    await agent.on_dtmf(call, "5")
    assert await app.next() == {"type": "dtmf", "digit": "5"}
    await agent.on_interrupt(call, "Hello the", 830)
    assert await app.next() == {
        "type": "interrupt", "utteranceUntilInterrupt": "Hello the", "durationUntilInterruptMs": 830,
    }
    await agent.on_caller_speech(call, "I need help", True)
    assert await app.next() == {
        "type": "prompt", "voicePrompt": "I need help", "lang": "en-US", "last": True,
    }
    await agent.on_stop(call)


async def test_hooks_after_agent_gone_do_not_raise(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call)
    assert app.conn is not None
    await app.conn.close()
    await asyncio.wait_for(call.ended.wait(), WAIT_S)
    await agent.on_dtmf(call, "1")
    await agent.on_interrupt(call, "", 0)
    await agent.on_caller_speech(call, "hi", False)
    await agent.on_stop(call)


# ---- play -------------------------------------------------------------------------------------------
async def test_play_wav_reaches_play_audio_with_its_rate(app: AgentApp) -> None:
    tone = np.sin(np.arange(1600) * 2 * np.pi * 440 / 16000).astype(np.float32) * 0.5
    url = "https://media.example/tone.wav"
    call = FakeCall()
    agent = await started(app, call, media_client({url: (200, wav_bytes(tone, 16000))}))
    await app.send({"type": "play", "source": url, "interruptible": False})
    await eventually(lambda: "play" in call.kinds())
    _, audio, rate, label, interruptible = next(e for e in call.events if e[0] == "play")
    assert rate == 16000 and label == url and interruptible is False
    assert audio.dtype == np.float32 and audio.shape == (1600,)
    np.testing.assert_allclose(audio, tone, atol=1e-3)
    await agent.on_stop(call)


async def test_play_keeps_message_order_with_text(app: AgentApp) -> None:
    url = "https://media.example/beep.wav"
    call = FakeCall()
    agent = await started(app, call, media_client({url: (200, wav_bytes(np.zeros(80), 8000))}))
    await app.send({"type": "text", "token": "Before.", "last": True})
    await app.send({"type": "play", "source": url})
    await app.send({"type": "text", "token": "After.", "last": True})
    await eventually(lambda: call.kinds().count("played") == 2 and "play" in call.kinds())
    order = [e[1] if e[0] == "say" else e[0] for e in call.events if e[0] in ("say", "play")]
    assert order == ["Before.", "play", "After."]
    await agent.on_stop(call)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 100, 200, "only WAV is supported"),
        (b"\x00" * 4096, 200, "only WAV is supported"),
        (b"", 404, "HTTP 404"),
    ],
)
async def test_play_failure_is_reported(app: AgentApp, body: bytes, status: int, expected: str) -> None:
    url = "https://media.example/clip.mp3"
    call = FakeCall()
    agent = await started(app, call, media_client({url: (status, body)}))
    await app.send({"type": "play", "source": url})
    error = await app.next("error")
    assert expected in error["description"] and url in error["description"]
    assert "play" not in call.kinds()
    await agent.on_stop(call)


async def test_play_oversize_is_reported(app: AgentApp) -> None:
    url = "https://media.example/long.wav"
    call = FakeCall()
    body = wav_bytes(np.zeros(8000), 8000)
    agent = await started(app, call, media_client({url: (200, body)}), play_max_bytes=1000)
    await app.send({"type": "play", "source": url})
    error = await app.next("error")
    assert "too large" in error["description"]
    assert "play" not in call.kinds()
    await agent.on_stop(call)


# ---- unsupported and invalid messages ---------------------------------------------------------------
async def test_send_digits_and_language_are_refused_with_error(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call)
    await app.send({"type": "sendDigits", "digits": "123#"})
    error = await app.next("error")
    assert "sendDigits is not supported" in error["description"]
    await app.send({"type": "language", "ttsLanguage": "es-ES", "transcriptionLanguage": "es-ES"})
    error = await app.next("error")
    assert "language" in error["description"].lower()
    assert not call.ended.is_set()
    await agent.on_stop(call)


async def test_invalid_messages_get_an_error_and_the_session_continues(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call, max_message_bytes=1024)
    await app.send("{not json")
    assert (await app.next("error"))["description"]
    await app.send({"type": "bogus"})
    assert (await app.next("error"))["description"]
    await app.send({"type": "text", "token": "x" * 2000, "last": True})
    assert "too large" in (await app.next("error"))["description"]
    await app.send({"type": "text", "token": "Still here.", "last": True})
    await eventually(lambda: ("played", "Still here.") in call.events)
    assert not call.ended.is_set()
    await agent.on_stop(call)


# ---- ending -----------------------------------------------------------------------------------------
async def test_end_waits_for_queued_speech(app: AgentApp) -> None:
    call = FakeCall(say_delay_s=0.2)
    agent = await started(app, call)
    await app.send({"type": "text", "token": "Goodbye", "last": False})
    await app.send({"type": "text", "token": " now.", "last": True})
    await app.send({"type": "end", "handoffData": '{"reason":"done"}'})
    await asyncio.wait_for(call.ended.wait(), WAIT_S)
    assert call.kinds()[-2:] == ["played", "end"]
    assert call.events[-1] == ("end", 'agent ended: {"reason":"done"}')
    await asyncio.wait_for(app.closed.wait(), WAIT_S)
    await agent.on_stop(call)


async def test_end_closes_a_turn_left_open(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call)
    await app.send({"type": "text", "token": "Half a", "last": False})
    await app.send({"type": "end"})
    await asyncio.wait_for(call.ended.wait(), WAIT_S)
    assert call.events[-2:] == [("played", "Half a"), ("end", "agent ended")]
    await agent.on_stop(call)


async def test_agent_closing_the_socket_ends_the_call(app: AgentApp) -> None:
    call = FakeCall()
    agent = await started(app, call)
    assert app.conn is not None
    await app.conn.close(1011, "crashed")
    await asyncio.wait_for(call.ended.wait(), WAIT_S)
    assert call.events[-1] == ("end", "agent disconnected")
    await agent.on_stop(call)


async def test_on_stop_cancels_everything(app: AgentApp) -> None:
    before = asyncio.all_tasks()
    call = FakeCall(say_delay_s=30)
    url = "https://media.example/slow.wav"

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, content=b"")

    http = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    agent = await started(app, call, http)
    await app.send({"type": "text", "token": "Never", "last": False})
    await app.send({"type": "text", "token": "A whole sentence.", "last": True})
    await app.send({"type": "play", "source": url})
    await eventually(lambda: "say-stream" in call.kinds())
    t0 = time.monotonic()
    await agent.on_stop(call)
    assert time.monotonic() - t0 < 1.0
    await asyncio.wait_for(app.closed.wait(), WAIT_S)
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
    assert leftover == [], leftover
    assert not call.ended.is_set()
    await http.aclose()


# ---- audio_fetch ----------------------------------------------------------------------------------
def test_decode_wav_formats() -> None:
    tone = (np.sin(np.arange(800) / 5) * 0.5).astype(np.float32)
    for width in (1, 2, 4):
        audio, rate = decode_wav(wav_bytes(tone, 22050, width=width))
        assert rate == 22050 and audio.dtype == np.float32
        np.testing.assert_allclose(audio, tone, atol=0.02)
    stereo = np.stack([tone, np.zeros_like(tone)], axis=1)
    audio, _ = decode_wav(wav_bytes(stereo, 8000))
    np.testing.assert_allclose(audio, tone / 2, atol=1e-3)
    pcm = (tone * 32767).astype(np.int16)
    audio, rate = decode_wav(mulaw_wav_bytes(pcm))
    assert rate == 8000 and audio.shape == (800,)
    np.testing.assert_allclose(audio, tone, atol=0.02)
    with pytest.raises(AudioFetchError, match="only WAV is supported"):
        decode_wav(b"OggS" + b"\x00" * 100)


@pytest.mark.parametrize("rate", [1, 100, 7999])
def test_clips_below_telephone_rate_are_refused(rate: int) -> None:
    # a few KB at 1 Hz would become gigabytes of 8 kHz audio
    with pytest.raises(AudioFetchError, match=f"at {rate} Hz"):
        decode_wav(wav_bytes(np.zeros(4000, dtype=np.float32), rate))


@pytest.mark.slow
async def test_a_compressed_audio_body_is_refused_not_decoded() -> None:
    import gzip

    bomb = gzip.compress(bytes(50_000_000))  # 50 MB of zeros in ~50 KB

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"
        return httpx.Response(200, content=bomb, headers={"content-encoding": "gzip"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(AudioFetchError, match="Content-Encoding 'gzip'"):
            await fetch_audio(client, "https://media.example/a.wav", max_bytes=1_000_000)


async def test_fetch_audio_limits_and_schemes() -> None:
    body = wav_bytes(np.zeros(4000), 8000)

    async def chunks() -> AsyncIterator[bytes]:
        yield body[:1000]
        yield body[1000:]

    def handle(request: httpx.Request) -> httpx.Response:
        # no Content-Length: the cap must hold while streaming
        return httpx.Response(200, content=chunks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        audio, rate = await fetch_audio(client, "http://x/a.wav", max_bytes=len(body))
        assert rate == 8000 and audio.shape == (4000,)
        with pytest.raises(AudioFetchError, match="too large"):
            await fetch_audio(client, "http://x/a.wav", max_bytes=len(body) - 1)
        with pytest.raises(AudioFetchError, match="only http") as refused:
            await fetch_audio(client, "file:///etc/passwd", max_bytes=1000)
        assert isinstance(refused.value, UpstreamFailed)  # in the error tree, by its class


@pytest.mark.slow
async def test_text_sent_after_an_interrupted_stream_is_spoken_or_reported(app: AgentApp) -> None:
    call = FakeCall()
    call.cut_after_tokens = 2  # the caller barges in after two tokens
    agent = await started(app, call)
    await app.send({"type": "text", "token": "Let me", "last": False})
    await app.send({"type": "text", "token": " explain", "last": False})
    await eventually(lambda: "interrupted" in call.kinds())
    call.cut_after_tokens = None
    # the agent abandons that reply (as CR apps do on `interrupt`) and says something new
    await app.send({"type": "text", "token": "Sorry, go ahead.", "last": True})
    errors: list[dict[str, Any]] = []

    def spoken_so_far() -> list[tuple[Any, ...]]:
        return [e for e in call.events if e[0] in ("say", "say-stream", "played")]

    def spoken_or_reported() -> bool:
        while not app.received.empty():
            m = app.received.get_nowait()
            if m["type"] == "error":
                errors.append(m)
        return (any("Sorry" in str(e) for e in spoken_so_far())
                or any("Sorry" in e["description"] for e in errors))

    await eventually(spoken_or_reported, what="'Sorry, go ahead.' spoken or reported")
    await agent.on_stop(call)
    assert not any("Sorry" in str(e) for e in spoken_so_far())
    assert any("interrupted" in e["description"] and "Sorry, go ahead." in e["description"]
               for e in errors), f"'Sorry, go ahead.' neither spoken nor reported: errors={errors}"


BODY = wav_bytes(np.zeros(8000, dtype=np.float32), 8000)


@pytest.mark.slow
async def test_play_downloads_of_one_call_are_bounded(app: AgentApp) -> None:
    """200 plays at once: the job table takes MAX_PENDING_JOBS and refuses the rest; of those, exactly
    MAX_CONCURRENT_DOWNLOADS download at a time, and every one is downloaded in the end."""
    release = asyncio.Event()
    downloads = 0
    in_flight = 0
    peak = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal downloads, in_flight, peak
        downloads += 1
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await release.wait()  # a media server that answers when the test says
            return httpx.Response(200, content=BODY)
        finally:
            in_flight -= 1

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    call = FakeCall()
    agent = await started(app, call, http)
    plays = 200
    for n in range(plays):
        await app.send({"type": "play", "source": f"https://media.example/{n}.wav"})
    for _ in range(plays - MAX_PENDING_JOBS):  # every play is handled: taken or refused
        assert "too many speech requests" in (await app.next("error"))["description"]
    await eventually(lambda: downloads >= MAX_CONCURRENT_DOWNLOADS, what="the first downloads started")
    assert downloads == peak == MAX_CONCURRENT_DOWNLOADS, f"{downloads} started, {peak} at once"
    release.set()
    await eventually(lambda: call.kinds().count("play") == MAX_PENDING_JOBS, what="every play played")
    await agent.on_stop(call)
    await http.aclose()
    assert downloads == MAX_PENDING_JOBS
    assert peak == MAX_CONCURRENT_DOWNLOADS, f"{peak} downloads of one call ran at once"


# ---- per-reply bounds, without a socket --------------------------------------------------------
class SocketlessConnection:
    """The connection a bare session writes to: records what would have been sent."""

    url = "ws://127.0.0.1:9/relay"
    close_code = None

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message) -> None:
        self.sent.append(getattr(message, "description", type(message).__name__))

    async def close(self) -> None:
        pass


def bare_session() -> tuple[RelaySession, list[str], FakeCall]:
    connection = SocketlessConnection()
    call = FakeCall()
    session = RelaySession(call, connection, http=httpx.AsyncClient(), play_max_bytes=1_000_000,
                           play_budget=PlayBudget(1_000_000), max_message_bytes=64 * 1024,
                           end_hangs_up=False)
    return session, connection.sent, call


def text_message(token: str, last: bool = False) -> str:
    return json.dumps({"type": "text", "token": token, "last": last})


async def handle(session: RelaySession, frame: str) -> None:
    await dispatch_frame(frame, session, max_bytes=session.max_message_bytes)


async def test_an_over_long_reply_is_cut_reported_once_and_not_buffered() -> None:
    session, sent, _call = bare_session()
    await handle(session, text_message("x" * (MAX_TURN_CHARS + 1)))
    turn = session.replies.current
    for _ in range(2000):                      # the agent keeps streaming the same reply
        await handle(session, text_message("y" * 1000))
    held = sum(map(len, turn.discarded))
    await handle(session, text_message("", last=True))
    assert held <= 4 * SNIPPET_CHARS
    assert len(sent) == 1 and sent[0].startswith(f"reply longer than {MAX_TURN_CHARS}")
    await session.stop()


async def test_a_reply_refused_for_lack_of_room_is_refused_once_and_never_spoken_in_pieces() -> None:
    session, sent, call = bare_session()
    gate = asyncio.Event()

    async def busy(result: SpeechResult) -> None:
        pass

    async def wait_for_gate(c) -> SpeechResult:
        await gate.wait()
        return SpeechResult(text="busy", outcome=SpeechOutcome.PLAYED)

    for _ in range(MAX_PENDING_JOBS):          # fill the job table with waiting speech
        session.jobs.start(ready(wait_for_gate), text="busy", settle=busy)
    await handle(session, text_message("Your balance "))
    await handle(session, text_message("is forty "))
    await handle(session, text_message("dollars."))
    gate.set()
    await eventually(lambda: not len(session.jobs), what="room in the job table")
    await handle(session, text_message(" Anything else?"))
    await handle(session, text_message("", last=True))
    await eventually(lambda: not len(session.jobs), what="every job started for the reply finished")
    assert len(sent) == 1, "one refusal expected for one reply"
    assert not [e for e in call.events if e[0].startswith("say") and e[1] != "busy"]
    await session.stop()
