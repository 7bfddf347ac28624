"""Hearing the caller, end to end: the real bridge on loopback with the embedded recogniser, this
test playing Twilio (real human speech as 8 kHz μ-law, on Twilio's 20 ms timing) and a
ConversationRelay agent application. Few and short: each streams a few seconds of real time."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import websockets

from telephony.agents.demo import DemoAgent, demo_answer
from telephony.testing.bridge_harness import running_bridge
from telephony.testing.twilio_emulator import SILENCE, TwilioEmulator
from tests.conftest import eventually, speech_clip
from tests.test_call_e2e import open_call, session_of, twiml_parameters
from tests.test_relay_e2e import AgentApp, agent_app
from tts_core.audio.mulaw import mulaw_to_pcm16
from tts_core.stt import Recogniser
from tts_core.stt.wer import normalise, word_errors

LONG_GREETING = ("Welcome to the long greeting, which goes on for quite a while so that there is "
                 "plenty of time to talk over it.")


def speech_end_ms(mulaw: bytes) -> int:
    """Where the words stop: the end of the clip's last frame louder than -40 dBFS and within 30 dB
    of its loudest (the recordings' own background noise sits at -45 to -60 dBFS)."""
    pcm = mulaw_to_pcm16(mulaw).astype(np.float32) / 32768
    frames = pcm[: pcm.size // 160 * 160].reshape(-1, 160)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    return (int(np.nonzero(level > max(-40.0, level.max() - 30))[0][-1]) + 1) * 20


async def say(call: TwilioEmulator, clip: bytes, trailing_silence_s: float = 1.5) -> float:
    """Stream the clip then silence in real time; returns when its last word was sent (wall clock:
    Twilio sends a frame once it is captured, so that is the send time of the last speech frame)."""
    started = time.monotonic()
    await call.stream_audio(clip + SILENCE * int(trailing_silence_s / 0.02))
    return started + (speech_end_ms(clip) - 20) / 1000


class TimedAgent(AgentApp):
    """Records when each message arrived; answers every final prompt at once, like a fast LLM."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, dict]] = []
        self.reply: str | None = None

    async def handler(self, ws: websockets.ServerConnection) -> None:
        self.socket = ws
        self.connected.set()
        async for raw in ws:
            message = json.loads(raw)
            self.arrivals.append((time.monotonic(), message))
            self.received.append(message)
            if self.reply is not None and message.get("type") == "prompt" and message.get("last"):
                await ws.send(json.dumps({"type": "text", "token": self.reply, "last": True}))


@pytest.mark.slow
async def test_caller_speech_reaches_the_agent_as_a_prompt_and_its_reply_is_heard(
    recogniser: Recogniser,
) -> None:
    async with agent_app() as base, running_bridge(stt="local", recogniser=recogniser) as rb, \
            httpx.AsyncClient() as client:
        agent = TimedAgent()
        agent.reply = "Going forward ten meters now."
        async with websockets.serve(agent.handler, "127.0.0.1", 0) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/relay"
            call = await open_call(rb, client, "CA41", f"?greeting=&agentUrl={url}")
            await eventually(lambda: agent.of_type("setup"))
            speech_ended = await say(call, speech_clip("go_forward_ten_meters"))
            assert await call.wait_for(lambda: call.stats.utterances, timeout=10)
            prompts = [(t, m) for t, m in agent.arrivals if m["type"] == "prompt"]
            assert len(prompts) == 1
            prompt_at, prompt = prompts[0]
            assert prompt == {"type": "prompt", "voicePrompt": prompt["voicePrompt"], "lang": "en-US",
                              "last": True}
            assert normalise(prompt["voicePrompt"]) == ["go", "forward", "ten", "meters"], prompt
            reply = call.stats.utterances[0]
            to_prompt = (prompt_at - speech_ended) * 1000
            to_reply = (reply.first_frame_received - speech_ended) * 1000
            print(f"\nend of caller speech -> final prompt {to_prompt:.0f} ms, "
                  f"-> first frame of the reply {to_reply:.0f} ms "
                  f"(endpoint {rb.settings.stt_endpoint_ms} ms)")
            assert rb.settings.stt_endpoint_ms - 150 <= to_prompt < 2000
            assert to_reply < 3000
            turns = session_of(rb, "CA41").listener.turn_log
            assert [t["speculative"] for t in turns] == ["hit"]
            assert call.stats.invalid == []
            await call.hang_up()
    assert base.received == []


@pytest.mark.slow
async def test_the_bridges_own_voice_echoed_back_at_minus_20_db_is_not_the_caller(
    recogniser: Recogniser,
) -> None:
    async with running_bridge(stt="local", recogniser=recogniser) as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA42", f"?greeting={quote(LONG_GREETING)}")
        await eventually(lambda: rb.bridge.calls)
        session = session_of(rb, "CA42")
        echo = asyncio.create_task(call.stream_echo(30, gain_db=-20.0, delay_ms=80))
        try:
            assert await call.wait_for(
                lambda: call.stats.utterances and call.stats.utterances[0].outcome != "playing", 30)
            heard = call.stats.utterances[0]
            assert heard.outcome == "played", "the echo of the greeting cut the greeting off"
            assert heard.frames > 200, "the greeting played for seconds, echoed all along"
            # the echo's tail: one more second of it (50 frames) reaches the bridge after the greeting ended
            tail_from = session.inbound_frames
            await eventually(lambda: session.inbound_frames >= tail_from + 50, what="1 s of echo tail heard")
        finally:
            echo.cancel()
        assert call.stats.clears == 0 and session.barge_ins == 0
        assert session.listener.turn_log == [], "the echo opened a caller turn"
        await call.hang_up()


@pytest.mark.slow
async def test_a_caller_talking_over_the_greeting_barges_in_and_is_then_recognised(
    recogniser: Recogniser,
) -> None:
    async with agent_app() as agent, running_bridge(stt="local", recogniser=recogniser) as rb, \
            httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA43", f"?greeting={quote(LONG_GREETING)}&agentUrl={agent.url}")
        assert await call.wait_for(lambda: call.stats.media_received > 40)
        await say(call, speech_clip("he_was_not_an_ill_disposed_young_man"), 1.2)
        await eventually(lambda: agent.of_type("prompt"), 5)
        assert call.stats.clears == 1
        kinds = [m["type"] for m in agent.received if m["type"] != "setup"]
        assert kinds == ["interrupt", "prompt"], kinds
        assert agent.of_type("interrupt")[0]["utteranceUntilInterrupt"]
        words = agent.of_type("prompt")[0]["voicePrompt"]
        assert word_errors("he was not an ill disposed young man", words)[0] <= 2, words
        await call.hang_up()


@pytest.mark.slow
async def test_partial_prompts_come_while_the_caller_talks_when_the_webhook_asks(
    recogniser: Recogniser,
) -> None:
    async with agent_app() as agent, running_bridge(stt="local", recogniser=recogniser) as rb, \
            httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA44", f"?greeting=&partialPrompts=true&agentUrl={agent.url}")
        await say(call, speech_clip("he_was_not_an_ill_disposed_young_man"), 1.2)
        await eventually(lambda: any(m["last"] for m in agent.of_type("prompt")), 5)
        prompts = agent.of_type("prompt")
        assert [m["last"] for m in prompts][-1] is True
        assert any(not m["last"] for m in prompts[:-1]), prompts
        assert all(not m["last"] for m in prompts[:-1])
        await call.hang_up()


@pytest.mark.slow
async def test_partial_prompts_parameter_is_carried_and_checked() -> None:
    async with running_bridge() as rb, httpx.AsyncClient() as client:
        _, params = twiml_parameters((await rb.webhook(client, "CA45", "?partialPrompts=true")).text)
        assert params["partialPrompts"] == "true"
        _, params = twiml_parameters((await rb.webhook(client, "CA46")).text)
        assert params["partialPrompts"] == "false"
        bad = await rb.webhook(client, "CA47", "?partialPrompts=maybe")
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_partial_prompts"


@pytest.mark.slow
async def test_a_newcomers_first_call_with_the_demo_agent_is_a_conversation(
    recogniser: Recogniser,
) -> None:
    async with running_bridge(stt="local", recogniser=recogniser) as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA48", "?greeting=")
        await eventually(lambda: rb.bridge.calls)
        session = session_of(rb, "CA48")
        await say(call, speech_clip("go_forward_ten_meters"), 0.8)
        assert await call.wait_for(lambda: call.played_utterances(), timeout=10)
        await eventually(lambda: session.turns)  # the end mark's echo reached the bridge
        spoken = session.turns[0]
        assert spoken["outcome"] == "played"
        # "You said: Go forward 10 meters." (31 characters); the log line keeps no words
        assert 25 <= spoken["chars"] <= 40, spoken
        await call.hang_up()


class FakeCall:
    def __init__(self) -> None:
        self.said: list[str] = []
        self.ended = False

    async def say(self, text: str, **_: object) -> None:
        self.said.append(text)

    async def end(self, reason: str = "", **_: object) -> None:
        self.ended = True


async def test_the_demo_agent_answers_what_the_caller_said() -> None:
    call, agent = FakeCall(), DemoAgent()
    await agent.on_caller_speech(call, "I'd like a pizza please.", False)
    assert call.said == [], "partials are not answered"
    await agent.on_caller_speech(call, "I'd like a pizza please.", True)
    assert call.said == ["You said: I'd like a pizza please."]
    assert "Hello" in demo_answer("Hi there!")[0]
    await agent.on_caller_speech(call, "OK, goodbye.", True)
    assert call.ended and "Goodbye" in call.said[-1]
    await agent.on_dtmf(call, "5")
    assert call.said[-1] == "You pressed 5."
