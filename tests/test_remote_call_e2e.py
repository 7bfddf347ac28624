"""A call voiced by the remote engine against second bridge processes serving ``/v1/audio/speech``:
a real server over real HTTP, killed with SIGKILL mid-utterance in the failover test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest

from telephony.testing.bridge_harness import running_bridge
from telephony.testing.bridge_process import BridgeProcess, bridge_process
from telephony.testing.twilio_emulator import SILENCE, TwilioEmulator
from tests.conftest import eventually
from tests.test_call_e2e import open_call
from tests.test_relay_e2e import AgentApp, agent_app
from tts_core.engines.openai_remote import OpenAIRemoteEngine
from tts_core.engines.piper import PiperEngine
from tts_core.engines.synthetic import SyntheticEngine

pytestmark = pytest.mark.slow  # end-to-end: runs outside the fast tier (pytest -m 'not slow')

API_KEY = "sk-remote-test"
GREETING = "Hello caller. This voice comes from a server across the network."
REPLY = "Your order shipped this morning, and it should arrive on Thursday."


@contextlib.asynccontextmanager
async def remote_bridges(count: int, *args: str, **env: str) -> AsyncIterator[list[BridgeProcess]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(bridge_process(
            "--insecure-dev", "--log-level", "warning", *args,
            env={"VOICE_BRIDGE_API_KEY": API_KEY, **env})) for _ in range(count)]


def padded_frames_inside_utterances(call: TwilioEmulator) -> int:
    """Frames the bridge sent that end in digital silence, other than an utterance's last frame.

    Only ``flush`` at an utterance's end may pad (the last partial frame); a frame ending in a run
    of μ-law silence in mid-utterance is padding at a seam (what encoding each HTTP chunk on its
    own does). The synthetic voice never falls silent, so there is none in its real audio.
    """
    count, frames = 0, []
    for item in call.received:
        if isinstance(item, bytes):
            frames.append(item)
        elif item.endswith("-end"):
            count += sum(1 for f in frames[:-1] if f.endswith(SILENCE[:8]))
            frames = []
    return count


def frames_sent(call: TwilioEmulator) -> int:
    return sum(isinstance(item, bytes) for item in call.received)


async def converse(engine: object, agent: AgentApp, voice: str) -> TwilioEmulator:
    """Greeting, then one agent reply; returns the finished call."""
    async with running_bridge(engine=engine) as rb, httpx.AsyncClient() as client:
        query = urlencode({"voice": voice, "greeting": GREETING, "agentUrl": agent.url})
        call = await open_call(rb, client, "CA61", f"?{query}")
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 1, timeout=20)
        await agent.stream_tokens(REPLY)
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 2, timeout=20)
        await call.hang_up()
        return call


def assert_conformant(call: TwilioEmulator) -> None:
    assert call.stats.invalid == []  # every message Twilio-valid, every media frame 160 bytes
    assert [n for n in call.stats.mark_names if n.endswith("-end")] == ["g0-u1-end", "g0-u2-end"]
    assert call.stats.marks_echoed == call.stats.marks_received


async def test_a_remote_voiced_call_is_as_conformant_as_a_local_one() -> None:
    async with remote_bridges(1, "--engine", "synthetic") as [server], agent_app() as agent:
        remote_call = await converse(
            OpenAIRemoteEngine([server.api_base], api_key=API_KEY, voices=["synthetic"]), agent,
            "synthetic")
    async with agent_app() as agent:
        local_call = await converse(SyntheticEngine(), agent, "synthetic")
    for call in (remote_call, local_call):
        assert_conformant(call)
        assert padded_frames_inside_utterances(call) == 0
    assert remote_call.stats.mark_names == local_call.stats.mark_names  # same segments, same marks
    assert abs(frames_sent(remote_call) - frames_sent(local_call)) <= 2  # same audio, same length


async def test_a_call_voiced_by_a_remote_piper_voice() -> None:
    async with remote_bridges(1, "--engine", "piper") as [server], agent_app() as agent:
        remote_call = await converse(
            OpenAIRemoteEngine([server.api_base], api_key=API_KEY, voices=["joe"]), agent, "joe")
    async with agent_app() as agent:
        local_call = await converse(PiperEngine(), agent, "joe")
    for call in (remote_call, local_call):
        assert_conformant(call)
    # Piper varies its timing from run to run (noise_w); 22.05 kHz served as 24 kHz pcm must still
    # come out the same length, not played too fast or too slow.
    assert abs(frames_sent(remote_call) - frames_sent(local_call)) <= frames_sent(local_call) * 0.1


@pytest.mark.parametrize("kill", ["first", "second"])
async def test_killing_a_server_mid_utterance_fails_that_utterance_and_the_next_uses_the_other(
        kill: str) -> None:
    # Servers that stream at their own pace (2x real time), as GPU servers do, so a kill lands
    # mid-stream.
    async with remote_bridges(2, "--engine", "synthetic", VOICE_BRIDGE_SYNTHETIC_REALTIME_FACTOR="0.5"
                              ) as servers, agent_app() as agent:
        engine = OpenAIRemoteEngine([s.api_base for s in servers], api_key=API_KEY, voices=["synthetic"])
        async with running_bridge(engine=engine) as rb, httpx.AsyncClient() as client:
            call = await open_call(rb, client, "CA62", f"?voice=synthetic&greeting=&agentUrl={agent.url}")
            await eventually(lambda: agent.of_type("setup"))
            await eventually(lambda: engine.busy_slots == 0)  # the webhook's warmup is over
            if kill == "second":  # make the other server the busy one
                engine.fleet.begin(engine.fleet.servers[0])
            before = [s["requests"] for s in engine.servers()]
            await agent.send(type="text", token="This long sentence is streamed by a server that "
                             "will not live to finish it, so the caller hears only its start.", last=True)
            assert await call.wait_for(lambda: call.stats.media_received > 0, timeout=10)
            (busy,) = [i for i, s in enumerate(engine.servers()) if s["requests"] > before[i]]
            assert busy == (0 if kill == "first" else 1)
            if kill == "second":
                engine.fleet.end(engine.fleet.servers[0])
            servers[busy].kill()
            await eventually(lambda: agent.of_type("error"), timeout=10)
            assert "speech failed" in agent.of_type("error")[0]["description"]
            errors_before = len(agent.of_type("error"))
            survivor = engine.servers()[1 - busy]["url"]
            requests_before = engine.servers()[1 - busy]["requests"]

            await agent.stream_tokens("Sorry about that. Here is the rest.")
            assert await call.wait_for(
                lambda: sum(u.outcome == "played" for u in call.stats.utterances) >= 2, timeout=20)
            await call.hang_up()
            assert len(agent.of_type("error")) == errors_before  # zero errors for the next utterance
            after = {s["url"]: s for s in engine.servers()}
            assert after[survivor]["requests"] > requests_before and after[survivor]["failures"] == 0
            assert after[servers[busy].api_base]["state"] == "backoff"
            assert call.stats.invalid == []
