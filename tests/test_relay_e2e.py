"""End-to-end with a remote agent: the real bridge on loopback, this test playing both Twilio (over
the Media Stream) and a ConversationRelay agent application (a WebSocket server the bridge dials)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import httpx
import numpy as np
import pytest
import websockets
from twilio.request_validator import RequestValidator

from telephony.agents import Agent, CallControl, SpeechOutcome, SpeechResult
from telephony.testing.bridge_harness import AUTH_TOKEN, running_bridge
from tests.conftest import eventually, wav_bytes
from tests.test_call_e2e import caller_speech, open_call
from tts_core.engines.synthetic import SyntheticEngine


@dataclass
class AgentApp:
    """A ConversationRelay application: records what the bridge sends, replies on cue."""

    url: str = ""
    received: list[dict] = field(default_factory=list)
    handshake_signature: str | None = None
    socket: websockets.ServerConnection | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.received if m.get("type") == kind]

    async def send(self, **message: object) -> None:
        assert self.socket is not None
        await self.socket.send(json.dumps(message))

    async def stream_tokens(self, text: str, pace_s: float = 0.02) -> None:
        words = text.split(" ")
        for index, word in enumerate(words):
            await self.send(type="text", token=(" " if index else "") + word,
                            last=index == len(words) - 1)
            await asyncio.sleep(pace_s)

    async def handler(self, ws: websockets.ServerConnection) -> None:
        self.socket = ws
        self.handshake_signature = ws.request.headers.get("X-Twilio-Signature")
        self.connected.set()
        async for raw in ws:
            self.received.append(json.loads(raw))


@asynccontextmanager
async def agent_app() -> AsyncIterator[AgentApp]:
    app = AgentApp()
    async with websockets.serve(app.handler, "127.0.0.1", 0) as server:
        app.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/relay"
        yield app


@pytest.mark.slow
async def test_agent_gets_a_signed_setup_and_its_streamed_tokens_are_spoken() -> None:
    async with agent_app() as agent, running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA21", f"?greeting=Hello.&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        setup = agent.of_type("setup")[0]
        assert setup["callSid"] == "CA21"
        assert setup["from"] == "+15550001111" and setup["to"] == "+15550002222"
        assert "token" not in setup["customParameters"], "the stream token must not leak to agents"
        assert RequestValidator(AUTH_TOKEN).validate(agent.url, {}, agent.handshake_signature)
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 1)  # the greeting
        await agent.stream_tokens("Your order shipped this morning, and it should arrive by Friday.")
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 2)
        reply = call.played_utterances()[1]
        assert reply.frames > 50 and reply.underruns == 0
        assert call.stats.invalid == []
        await call.hang_up()


@pytest.mark.slow
async def test_dtmf_reaches_the_agent() -> None:
    async with agent_app() as agent, running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA22", f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        await call.send_dtmf("7")
        await eventually(lambda: agent.of_type("dtmf"))
        assert agent.of_type("dtmf")[0] == {"type": "dtmf", "digit": "7"}
        await call.hang_up()


@pytest.mark.slow
async def test_barge_in_sends_clear_to_twilio_and_interrupt_to_the_agent() -> None:
    engine = SyntheticEngine(realtime_factor=0.3)
    async with agent_app() as agent, running_bridge(engine=engine) as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA23", f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        long_reply = ("Let me read you the full terms and conditions of the account, which are long. "
                      "Section one covers fees. Section two covers interest. Section three covers "
                      "disputes and how to raise them.")
        await agent.send(type="text", token=long_reply, last=True)
        assert await call.wait_for(lambda: call.stats.media_received > 60)
        await call.stream_audio(caller_speech(0.5))
        assert await call.wait_for(lambda: call.stats.clears == 1, timeout=5)
        await eventually(lambda: agent.of_type("interrupt"))
        interrupt = agent.of_type("interrupt")[0]
        assert set(interrupt) == {"type", "utteranceUntilInterrupt", "durationUntilInterruptMs"}
        assert interrupt["durationUntilInterruptMs"] > 500
        heard = interrupt["utteranceUntilInterrupt"]
        assert heard and long_reply.startswith(heard), heard
        assert len(heard) < len(long_reply)
        assert engine.busy_slots == 0
        await call.hang_up()


@pytest.mark.slow
async def test_agent_end_lets_speech_finish_then_closes_the_stream() -> None:
    async with agent_app() as agent, running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA24", f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        await agent.send(type="text", token="Goodbye and thanks for calling.", last=True)
        await agent.send(type="end", handoffData='{"reason": "done"}')
        assert await call.wait_closed(10)
        assert len(call.played_utterances()) == 1, "the goodbye must be heard before the stream closes"
        assert call.stats.close_code == 1000


@pytest.mark.slow
async def test_agent_that_cannot_be_reached_ends_the_call_cleanly() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA25", "?greeting=&agentUrl=ws://127.0.0.1:9/none")
        assert await call.wait_closed(10)
        assert rb.bridge.calls == {}
        assert rb.bridge.engine.busy_slots == 0


class SaysTheDigitAgent(Agent):
    """An in-process agent that says each digit pressed and records how the saying went, for the
    test to check: an ``assert`` in an agent hook is logged and swallowed by the call (one failing
    hook must not end the call), so it could never fail a test."""

    said: ClassVar[list[tuple[str, SpeechResult]]] = []

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        async def tokens() -> AsyncIterator[str]:
            for token in ["You ", "pressed ", digit, "."]:
                yield token

        SaysTheDigitAgent.said.append((digit, await call.say(tokens())))


@pytest.mark.slow
async def test_in_process_python_agent_is_selected_by_name() -> None:
    SaysTheDigitAgent.said.clear()
    async with running_bridge(default_agent="python:tests.test_relay_e2e:SaysTheDigitAgent") as rb:
        async with httpx.AsyncClient() as client:
            call = await open_call(rb, client, "CA26", "?greeting=")
        await call.send_dtmf("4")
        await eventually(lambda: SaysTheDigitAgent.said, what="the agent's say() returned")
        [(digit, result)] = SaysTheDigitAgent.said
        assert digit == "4"
        assert result.outcome is SpeechOutcome.PLAYED and result.text == "You pressed 4.", result
        assert len(call.played_utterances()) == 1
        await call.hang_up()


# ---- the agent disconnects: what it sent is still spoken, then the call ends ----------------------
@pytest.mark.slow
async def test_agent_disconnect_with_an_open_streamed_turn_still_ends_the_call() -> None:
    async with agent_app() as agent, running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA91", f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        # a streamed reply whose last token never comes: the agent crashes mid-reply
        await agent.send(type="text", token="Your balance is forty two dollars", last=False)
        # a barrier: the bridge answers messages in order, so once this one's error is back the
        # open turn above has been taken in
        await agent.send(type="no-such-message")
        await eventually(lambda: agent.of_type("error"), what="the bridge took in the open turn")
        await agent.socket.close()
        closed = await call.wait_closed(10)
        sessions = list(rb.bridge.calls)
        await call.hang_up()
        assert closed, f"call still open 10 s after the agent left; sessions={sessions}, " \
                       f"utterances heard={len(call.played_utterances())}"


@pytest.mark.slow
async def test_text_sent_just_before_the_agent_disconnects_is_spoken() -> None:
    async with agent_app() as agent, running_bridge() as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA92", f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        await agent.send(type="text", token="Goodbye and thanks for calling.", last=True)
        await agent.socket.close()
        assert await call.wait_closed(10)
        assert len(call.played_utterances()) == 1, (
            f"the goodbye was lost: media frames received={call.stats.media_received}")


@pytest.mark.slow
async def test_play_and_text_sent_before_the_agent_disconnects_are_spoken() -> None:
    body = wav_bytes(np.full(8000, 0.3, dtype=np.float32), 8000)

    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.5)  # the media server takes a moment
        return httpx.Response(200, content=body)

    async with agent_app() as agent, running_bridge() as rb, httpx.AsyncClient() as client:
        rb.bridge.play_http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
        call = await open_call(rb, client, "CA93", f"?greeting=&agentUrl={agent.url}")
        await eventually(lambda: agent.of_type("setup"))
        await agent.send(type="play", source="https://media.example/hold.wav")
        await agent.send(type="text", token="Goodbye and thanks for calling.", last=True)
        await agent.socket.close()
        assert await call.wait_closed(10)
        assert len(call.played_utterances()) == 2, (
            f"lost: heard {len(call.played_utterances())} of 2; media frames={call.stats.media_received}")
