"""Remote recognition end to end: a bridge with VOICE_BRIDGE_STT=openai hears its caller through a
SECOND bridge process on loopback that serves ``/v1/audio/transcriptions`` from its embedded
recogniser. The caller speaks a real human clip through the Twilio emulator; the ConversationRelay
agent must receive the right ``prompt``, and the caller must hear its reply."""

from __future__ import annotations

import httpx
import pytest
import websockets

from telephony.testing.asgi_server import free_port_url
from telephony.testing.bridge_harness import running_bridge
from telephony.testing.bridge_process import bridge_process
from tests.conftest import eventually, speech_clip
from tests.test_call_e2e import open_call, session_of
from tests.test_stt_e2e import TimedAgent, say
from tts_core.stt.openai_remote import RemoteRecogniser
from tts_core.stt.wer import normalise

pytestmark = pytest.mark.slow  # end-to-end: runs outside the fast tier (pytest -m 'not slow')

API_KEY = "sk-remote-stt-test"


async def test_a_caller_is_heard_through_a_second_bridges_recogniser() -> None:
    async with bridge_process("--insecure-dev", "--engine", "synthetic", "--log-level", "warning",
                              env={"VOICE_BRIDGE_API_KEY": API_KEY, "VOICE_BRIDGE_STT": "local"}
                              ) as server:
        # A dead server first in the list: turns that land on it fail over to the live one.
        dead = free_port_url() + "/v1"
        async with running_bridge(stt="openai", stt_url=f"{dead},{server.api_base}",
                                  stt_api_key=API_KEY) as rb, httpx.AsyncClient() as client:
            assert isinstance(rb.bridge.recogniser, RemoteRecogniser)
            agent = TimedAgent()
            agent.reply = "Going forward ten meters now."
            async with websockets.serve(agent.handler, "127.0.0.1", 0) as relay:
                url = f"ws://127.0.0.1:{relay.sockets[0].getsockname()[1]}/relay"
                call = await open_call(rb, client, "CA71", f"?greeting=&agentUrl={url}")
                await eventually(lambda: agent.of_type("setup"))
                speech_ended = await say(call, speech_clip("go_forward_ten_meters"))
                assert await call.wait_for(lambda: call.stats.utterances, timeout=10)
                prompts = [(t, m) for t, m in agent.arrivals if m["type"] == "prompt"]
                assert len(prompts) == 1, prompts
                prompt_at, prompt = prompts[0]
                assert prompt["last"] is True and prompt["lang"] == "en-US"
                assert normalise(prompt["voicePrompt"]) == ["go", "forward", "ten", "meters"], prompt
                assert await call.wait_for(
                    lambda: call.stats.utterances[0].outcome == "played", timeout=10)
                to_prompt = (prompt_at - speech_ended) * 1000
                to_reply = (call.stats.utterances[0].first_frame_received - speech_ended) * 1000
                print(f"\nremote recogniser: end of caller speech -> final prompt {to_prompt:.0f} ms, "
                      f"-> first frame of the reply {to_reply:.0f} ms "
                      f"(endpoint {rb.settings.stt_endpoint_ms} ms)")
                assert to_prompt < 2500 and to_reply < 3500
                turns = session_of(rb, "CA71").listener.turn_log
                assert len(turns) == 1 and "error" not in turns[0], turns
                assert call.stats.invalid == []
                await call.hang_up()
            servers = {s["url"]: s for s in rb.bridge.recogniser.servers()}
            assert servers[server.api_base]["requests"] >= 1 and servers[server.api_base]["failures"] == 0
            # The first turn of a fresh fleet goes to the first URL (ties round-robin from it): the
            # dead one, so the prompt above came through a failover.
            assert servers[dead]["failures"] == 1 and servers[dead]["state"] == "backoff"
