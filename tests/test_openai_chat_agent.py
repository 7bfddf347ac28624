"""The built-in LLM agent (``openai-chat``) against a STAND-IN chat completion server
(tests/chat_standin.py: no LLM runs in the tests) and a fake call; then end to end through the
real bridge and the Twilio emulator."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from telephony.agents.chat_stream import ChatServer
from telephony.agents.openai_chat import APOLOGY, OpenAIChatAgent
from telephony.config import ConfigError, settings_from_env
from tests.chat_standin import Script, StandInChatServer
from tests.conftest import eventually
from tests.fake_call import FakeCall
from tts_core.errors import UpstreamFailed

API_KEY = "sk-standin-secret-4242"
SYSTEM = "You are a test agent. Answer briefly."
GREETING = "Hi, this is the test line."


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def chat_agent(llm: StandInChatServer, http: httpx.AsyncClient, errors: list[str] | None = None,
               **server: float) -> OpenAIChatAgent:
    return OpenAIChatAgent(
        ChatServer(base_url=llm.url, model="standin-model", api_key=API_KEY, max_tokens=200,
                   **{"first_token_timeout_s": 2.0, "stall_timeout_s": 2.0, **server}),
        http=http, system_prompt=SYSTEM, max_history=24,
        on_error=errors.append if errors is not None else None)


async def started(agent: OpenAIChatAgent, greeting: str = GREETING) -> FakeCall:
    call = FakeCall(greeting=greeting)
    await agent.on_start(call)
    return call


# ---- (1) one turn -----------------------------------------------------------------------------------
@pytest.mark.slow
async def test_a_caller_turn_streams_tokens_into_say_and_sends_the_system_prompt(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    chat_standin.script(Script(tokens=["Sure", ",", " I", " can", " help", "."], token_delay_s=0.1))
    agent = chat_agent(chat_standin, http)
    call = await started(agent)
    await agent.on_caller_speech(call, "I need", final=False)  # partials are not turns
    await agent.on_caller_speech(call, "I need some help", final=True)
    request = await chat_standin.wait_requests(1)
    (reply,) = await call.wait_speeches(1)
    assert request.finished.is_set()
    assert reply.first_token.is_set()

    assert reply.tokens == ["Sure", ",", " I", " can", " help", "."]  # token by token, unchanged
    assert reply.preemptible and call.spoken() == ["Sure, I can help."]
    assert len(chat_standin.requests) == 1
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.body
    assert body["stream"] is True and body["model"] == "standin-model" and body["max_tokens"] == 200
    system, user = body["messages"]
    assert system["role"] == "system" and system["content"].startswith(SYSTEM)
    assert GREETING in system["content"], "the greeting the bridge spoke is part of the conversation"
    assert user == {"role": "user", "content": "I need some help"}
    await agent.on_stop(call)


@pytest.mark.slow
async def test_tokens_reach_say_while_the_server_is_still_generating(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    chat_standin.script(Script(tokens=["One", " two", " three."], token_delay_s=0.3))
    agent = chat_agent(chat_standin, http)
    call = await started(agent)
    await agent.on_caller_speech(call, "Count", final=True)
    request = await chat_standin.wait_requests(1)
    await call.wait_tokens(1)
    assert not request.finished.is_set(), "the first token must be spoken before the reply is complete"
    assert call.speeches[0].tokens == ["One"]
    await call.wait_speeches(1)
    await agent.on_stop(call)


# ---- (2) the conversation ----------------------------------------------------------------------------
async def test_the_second_turn_carries_the_first_exchange(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    chat_standin.script(Script(tokens=["It is", " sunny."]), Script(tokens=["Yes", "."]))
    agent = chat_agent(chat_standin, http)
    call = await started(agent)
    await agent.on_caller_speech(call, "How is the weather?", final=True)
    await call.wait_speeches(1)
    await agent.on_caller_speech(call, "Really?", final=True)
    second = await chat_standin.wait_requests(2)
    await call.wait_speeches(2)
    assert second.messages[1:] == [
        {"role": "user", "content": "How is the weather?"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Really?"},
    ]
    assert call.spoken() == ["It is sunny.", "Yes."]
    await agent.on_stop(call)


async def test_history_is_bounded_and_still_starts_with_a_caller_turn(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    agent = OpenAIChatAgent(ChatServer(base_url=chat_standin.url), http=http, system_prompt=SYSTEM,
                            max_history=4)
    call = await started(agent)
    for n in range(4):
        await agent.on_caller_speech(call, f"turn {n}", final=True)
        await call.wait_speeches(n + 1)
    last = await chat_standin.wait_requests(4)
    assert [m["role"] for m in last.messages] == ["system", "user", "assistant", "user"]
    assert last.messages[1]["content"] == "turn 2" and last.messages[3]["content"] == "turn 3"
    assert "model" not in last.body and "authorization" not in last.headers  # none configured
    await agent.on_stop(call)


async def test_a_keypress_is_a_caller_turn(chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    agent = chat_agent(chat_standin, http)
    call = await started(agent)
    await agent.on_dtmf(call, "5")
    request = await chat_standin.wait_requests(1)
    assert request.messages[-1] == {"role": "user", "content": "(the caller pressed 5)"}
    await call.wait_speeches(1)
    await agent.on_stop(call)


# ---- (3) interruptions ---------------------------------------------------------------------------------
@pytest.mark.slow
async def test_an_interrupted_reply_keeps_only_what_the_caller_heard(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    words = ["Well,", " the", " answer", " is", " long", " and", " winding."]
    chat_standin.script(Script(tokens=words, token_delay_s=0.15), Script(tokens=["Okay."]))
    agent = chat_agent(chat_standin, http)
    call = await started(agent)
    await agent.on_caller_speech(call, "Tell me everything", final=True)
    first = await chat_standin.wait_requests(1)
    await call.wait_tokens(3)
    result = call.interrupt(heard="Well, the")  # the caller heard two words, then barged in
    assert result is not None and result.heard_text == "Well, the"
    await asyncio.wait_for(first.client_closed.wait(), 2)  # the model stops generating
    assert first.tokens_sent < len(words)
    await agent.on_interrupt(call, result.heard_text, 600)  # the bridge's hook, after the cut
    await agent.on_caller_speech(call, "Stop, just say okay", final=True)
    second = await chat_standin.wait_requests(2)
    assert second.messages[1:] == [
        {"role": "user", "content": "Tell me everything"},
        {"role": "assistant", "content": "Well, the"},
        {"role": "user", "content": "Stop, just say okay"},
    ]
    await call.wait_speeches(2)
    assert APOLOGY not in [s.text for s in call.speeches], "an interruption is not an error"
    await agent.on_stop(call)


async def test_an_interrupted_greeting_is_kept_as_far_as_it_was_heard(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    agent = chat_agent(chat_standin, http)
    call = await started(agent, greeting="Welcome to the clinic. Our hours are nine to five.")
    await agent.on_interrupt(call, "Welcome to the clinic.", 1500)
    await agent.on_caller_speech(call, "I want an appointment", final=True)
    request = await chat_standin.wait_requests(1)
    system = request.messages[0]["content"]
    assert "Welcome to the clinic." in system and "nine to five" not in system
    await call.wait_speeches(1)
    await agent.on_stop(call)


# ---- (4) a new turn while a reply streams ----------------------------------------------------------------
async def test_a_new_turn_while_streaming_cancels_the_old_request_and_answers_the_new_one(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    chat_standin.script(Script(tokens=["Let", " me", " think", " about", " that"], stall_after=2),
                        Script(tokens=["Sure", ", bye."]))
    agent = chat_agent(chat_standin, http, stall_timeout_s=30)
    call = await started(agent)
    await agent.on_caller_speech(call, "What is the meaning of life?", final=True)
    first = await chat_standin.wait_requests(1)
    await call.wait_tokens(2)
    await agent.on_caller_speech(call, "Never mind, goodbye", final=True)
    await asyncio.wait_for(first.client_closed.wait(), 2)  # the stand-in saw the connection close
    second = await chat_standin.wait_requests(2)
    old, new = await call.wait_speeches(2)
    assert old.future.result().outcome.value == "interrupted"
    assert new.text == "Sure, bye." and new.future.result().outcome.value == "played"
    assert second.messages[1:] == [
        {"role": "user", "content": "What is the meaning of life?"},
        {"role": "assistant", "content": "Let me"},  # what the caller heard of the old reply
        {"role": "user", "content": "Never mind, goodbye"},
    ]
    assert len(chat_standin.requests) == 2
    await agent.on_stop(call)


async def test_a_new_turn_before_the_first_token_merges_the_caller_turns(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    chat_standin.script(Script(first_delay_s=30), Script(tokens=["Both", " noted."]))
    agent = chat_agent(chat_standin, http, first_token_timeout_s=30)
    call = await started(agent, greeting="")
    await agent.on_caller_speech(call, "I want to book", final=True)
    first = await chat_standin.wait_requests(1)
    await agent.on_caller_speech(call, "a table for two", final=True)
    await asyncio.wait_for(first.client_closed.wait(), 2)
    second = await chat_standin.wait_requests(2)
    # Nothing of the first reply was heard: one caller turn, roles still alternate.
    assert second.messages == [{"role": "system", "content": SYSTEM},
                               {"role": "user", "content": "I want to book\na table for two"}]
    await call.wait_speeches(2)
    assert call.spoken()[-1] == "Both noted."
    await agent.on_stop(call)


@pytest.mark.slow
async def test_a_turn_queued_behind_the_greeting_asks_at_once_and_a_newer_turn_cancels_it(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    greeting_playing = asyncio.Event()

    async def long_greeting() -> AsyncIterator[str]:
        yield "Welcome to a very long greeting"
        await greeting_playing.wait()

    chat_standin.script(Script(tokens=["First", " answer", " never", " ends"], stall_after=2),
                        Script(tokens=["Second", " answer."]))
    agent = chat_agent(chat_standin, http, stall_timeout_s=30)
    call = await started(agent)
    greeting = asyncio.create_task(call.say(long_greeting(), preemptible=False))  # not preemptible
    await call.wait_tokens(1)
    await agent.on_caller_speech(call, "Hello", final=True)
    first = await chat_standin.wait_requests(1)  # asked while the greeting still plays
    turn = agent._current
    assert turn is not None and await eventually(lambda: turn.chars == len("First answer"))  # buffered
    await agent.on_caller_speech(call, "Are you there?", final=True)
    # Nothing preempts a reply queued behind the greeting: the agent itself closes its request.
    await asyncio.wait_for(first.client_closed.wait(), 2)
    second = await chat_standin.wait_requests(2)
    assert second.messages[-1] == {"role": "user", "content": "Hello\nAre you there?"}
    greeting_playing.set()
    await greeting
    _, old, new = await call.wait_speeches(3)
    assert old.text == "", "a superseded reply says nothing of what it had buffered"
    assert new.text == "Second answer."
    await agent.on_stop(call)


async def test_on_stop_cancels_the_request_in_flight_and_leaves_no_task(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    chat_standin.script(Script(tokens=["a", "b", "c"], stall_after=1))
    agent = chat_agent(chat_standin, http, stall_timeout_s=30)
    call = await started(agent)
    await agent.on_caller_speech(call, "Hello?", final=True)
    request = await chat_standin.wait_requests(1)
    await call.wait_tokens(1)
    await asyncio.wait_for(agent.on_stop(call), 2)  # on its own, without the speaker closing first
    await asyncio.wait_for(request.client_closed.wait(), 2)
    assert not agent._tasks
    await call.aclose()
    await agent.on_caller_speech(call, "Anyone?", final=True)  # after stop: nothing starts
    assert len(chat_standin.requests) == 1 and not agent._tasks


# ---- (5) errors and timeouts ----------------------------------------------------------------------------
ERRORS = {
    "http_500_json": (Script(status=500, error_body={"error": {"message": "CUDA out of memory",
                                                               "type": "server_error"}}),
                      "http", "CUDA out of memory"),
    "http_404_ollama_shape": (Script(status=404, error_body={"error": "model 'x' not found"}),
                              "http", "model 'x' not found"),
    "malformed_event": (Script(raw_events=['{"choices": [{"delta": {"content": "Hi"}}]}', "{not json"]),
                        "malformed", "not a JSON event"),
    "error_event": (Script(raw_events=['{"error": {"message": "context length exceeded"}}']),
                    "server", "context length exceeded"),
    "first_token_timeout": (Script(first_token_delay_s=5), "first_token_timeout", "no first token"),
    "stall": (Script(tokens=["Part", " of", " it", " never", " ends"], stall_after=2), "stall", "no token"),
    "truncated": (Script(tokens=["Cut"], done=False), "truncated", "before [DONE]"),
    "empty_reply": (Script(tokens=[]), "empty", "no text to speak"),
    "only_reasoning": (Script(tokens=["<think>", "Let me think", " at length"]), "empty", "no text"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ERRORS))
async def test_a_failing_chat_server_is_answered_with_an_apology_and_the_call_goes_on(
        case: str, chat_standin: StandInChatServer, http: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture) -> None:
    script, kind, detail = ERRORS[case]
    chat_standin.script(script, Script(tokens=["Working", " again."]))
    errors: list[str] = []
    agent = chat_agent(chat_standin, http, errors, first_token_timeout_s=0.4, stall_timeout_s=0.4)
    call = await started(agent)
    with caplog.at_level(logging.WARNING, logger="voice_bridge.llm"):
        await agent.on_caller_speech(call, "Hello?", final=True)
        speeches = await call.wait_speeches(2)
    assert speeches[-1].text == APOLOGY and speeches[-1].future.result().outcome.value == "played"
    assert errors == [f"llm_{kind}"]
    assert kind in caplog.text and detail in caplog.text
    assert API_KEY not in caplog.text
    await agent.on_caller_speech(call, "Hello again?", final=True)
    await call.wait_speeches(3)
    assert call.spoken()[-1] == "Working again."
    assert chat_standin.requests[1].messages[-1]["role"] == "user"
    await agent.on_stop(call)


async def test_a_chat_server_that_refuses_connections_gets_an_apology(
        http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    async with StandInChatServer() as gone:
        url = gone.url  # a port nobody listens on once the stand-in is closed
    errors: list[str] = []
    agent = OpenAIChatAgent(ChatServer(base_url=url, api_key=API_KEY), http=http, system_prompt=SYSTEM,
                            on_error=errors.append)
    call = await started(agent)
    with caplog.at_level(logging.WARNING, logger="voice_bridge.llm"):
        await agent.on_caller_speech(call, "Hello?", final=True)
        speeches = await call.wait_speeches(2)
    assert speeches[-1].text == APOLOGY
    assert errors == ["llm_connect"] and "cannot reach the chat server" in caplog.text
    assert API_KEY not in caplog.text
    await agent.on_stop(call)


async def test_a_chat_failure_is_an_upstream_failure_labelled_for_metrics(http: httpx.AsyncClient) -> None:
    from telephony.agents.chat_stream import stream_chat

    async with StandInChatServer() as gone:
        url = gone.url
    with pytest.raises(UpstreamFailed) as info:
        async for _token in stream_chat(http, ChatServer(base_url=url), [{"role": "user", "content": "hi"}]):
            pass
    assert (info.value.failure, info.value.kind, info.value.http_status) == (
        "connect", "upstream_failed", 502)


@pytest.mark.parametrize(("tokens", "spoken"), [
    (["Hello", " there", "."], ["Hello", " there", "."]),  # untouched, token by token
    (["<th", "ink>", "The caller", " greets me.", "</th", "ink>", "\n\nHi", " there."],
     ["\n\nHi", " there."]),
    (["\n<think>x</think>Hi", "!"], ["Hi", "!"]),
    (["<", "3 you"], ["<3 you"]),
    (["<thi"], ["<thi"]),
    (["<think>", "never closed"], []),
    (["I think <think> is a tag."], ["I think <think> is a tag."]),
])
async def test_a_leading_reasoning_block_is_not_spoken(tokens: list[str], spoken: list[str]) -> None:
    from telephony.agents.chat_stream import without_reasoning

    async def stream() -> AsyncIterator[str]:
        for token in tokens:
            yield token

    assert [t async for t in without_reasoning(stream())] == spoken


async def test_a_reasoning_model_reply_is_spoken_without_its_thoughts(
        chat_standin: StandInChatServer, http: httpx.AsyncClient) -> None:
    chat_standin.script(Script(tokens=["<think>", "\nThe caller", " says hi.", "\n</think>", "\n\n",
                                       "Hello", "!"]))
    agent = chat_agent(chat_standin, http)
    call = await started(agent)
    await agent.on_caller_speech(call, "Hi", final=True)
    (reply,) = await call.wait_speeches(1)
    assert reply.text == "Hello!"
    await agent.on_caller_speech(call, "Bye", final=True)
    second = await chat_standin.wait_requests(2)
    assert second.messages[2] == {"role": "assistant", "content": "Hello!"}
    await call.wait_speeches(2)
    await agent.on_stop(call)


async def test_the_stand_in_speaks_the_protocol_the_official_openai_client_reads(
        chat_standin: StandInChatServer) -> None:
    openai = pytest.importorskip("openai")
    chat_standin.script(Script(tokens=["Hello", " from", " the", " stand-in."]))
    client = openai.AsyncOpenAI(base_url=chat_standin.url, api_key=API_KEY, max_retries=0)
    stream = await client.chat.completions.create(model="m", stream=True,
                                                  messages=[{"role": "user", "content": "hi"}])
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "Hello from the stand-in."
    await client.close()


# ---- (6) configuration ------------------------------------------------------------------------------------
def test_openai_chat_without_an_llm_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="VOICE_BRIDGE_LLM_URL"):
        settings_from_env({"VOICE_BRIDGE_DEFAULT_AGENT": "openai-chat"}, insecure_dev=True)


def test_the_server_refuses_to_start_with_openai_chat_and_no_llm_url(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from telephony.cli import main

    monkeypatch.setenv("VOICE_BRIDGE_DEFAULT_AGENT", "openai-chat")
    monkeypatch.delenv("VOICE_BRIDGE_LLM_URL", raising=False)
    assert main(["serve", "--insecure-dev", "--engine", "synthetic"]) == 2
    assert "VOICE_BRIDGE_LLM_URL" in capsys.readouterr().err


@pytest.mark.parametrize(("url", "problem"), [
    ("http://localhost:8000", "API base path"), ("localhost:8000/v1", "http(s)://"),
    ("http://localhost:8000/v1?x=1", "query string"),
])
def test_a_bad_llm_url_is_a_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=r"llm_url") as info:
        settings_from_env({"VOICE_BRIDGE_LLM_URL": url}, insecure_dev=True)
    assert problem in str(info.value)


def test_llm_settings_are_read_and_the_api_key_never_shows() -> None:
    settings = settings_from_env({
        "VOICE_BRIDGE_DEFAULT_AGENT": "openai-chat", "VOICE_BRIDGE_LLM_URL": "http://gpu1:8000/v1/",
        "VOICE_BRIDGE_LLM_MODEL": "qwen", "VOICE_BRIDGE_LLM_API_KEY": API_KEY,
        "VOICE_BRIDGE_LLM_FIRST_TOKEN_TIMEOUT_S": "3", "VOICE_BRIDGE_LLM_MAX_HISTORY": "10",
    }, insecure_dev=True)
    assert settings.llm_url == "http://gpu1:8000/v1" and settings.llm_model == "qwen"
    assert settings.llm_first_token_timeout_s == 3 and settings.llm_max_history == 10
    assert "phone call" in settings.llm_system_prompt  # the default prompt is a phone agent's
    assert API_KEY not in repr(settings) and API_KEY not in str(settings)
    assert API_KEY not in repr(ChatServer(base_url="http://x/v1", api_key=API_KEY))
    with_password = ChatServer(base_url=f"https://user:{API_KEY}@llm.example.com:8443/v1")
    assert with_password.display_url == "https://llm.example.com:8443/v1/chat/completions"


@pytest.mark.slow
async def test_a_call_may_pick_openai_chat_only_when_the_operator_configured_an_llm(
        chat_standin: StandInChatServer) -> None:
    from telephony.testing.bridge_harness import running_bridge

    async with running_bridge() as rb, httpx.AsyncClient() as client:  # no LLM configured
        response = await rb.webhook(client, "CA60", "?agentUrl=openai-chat")
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_agent"
    async with running_bridge(llm_url=chat_standin.url) as rb, httpx.AsyncClient() as client:
        response = await rb.webhook(client, "CA61", "?agentUrl=openai-chat")
        assert response.status_code == 200 and 'value="openai-chat"' in response.text


# ---- (7) end to end: the real bridge, the Twilio emulator as the caller's phone --------------------------
@pytest.mark.slow
async def test_end_to_end_a_caller_turn_is_answered_with_audio_the_caller_hears(
        chat_standin: StandInChatServer) -> None:
    from telephony.testing.bridge_harness import running_bridge
    from tests.test_call_e2e import open_call, session_of

    chat_standin.script(Script(tokens=["We", " are", " open", " from", " nine", " to", " five", "."],
                               token_delay_s=0.02))
    async with running_bridge(default_agent="openai-chat", llm_url=chat_standin.url,
                              llm_api_key=API_KEY) as rb, httpx.AsyncClient() as client:
        call = await open_call(rb, client, "CA70", "?greeting=Thanks%20for%20calling.")
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 1)
        session = session_of(rb, "CA70")
        assert isinstance(session.agent, OpenAIChatAgent)
        # No recogniser on this branch: deliver the caller's words the way the session delivers
        # its agent events, straight to the agent's hook with the session as the CallControl.
        turn_at = time.monotonic()
        await session.agent.on_caller_speech(session, "When are you open?", True)
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 2, timeout=10)
        reply = call.played_utterances()[1]
        first_frame_after_ms = (reply.first_frame_received - turn_at) * 1000
        print(f"caller turn -> first reply frame at the caller: {first_frame_after_ms:.0f} ms")
        assert reply.frames >= 50, "the reply is heard as audio (about a second of it or more)"
        assert first_frame_after_ms < 1000, f"first reply frame {first_frame_after_ms:.0f} ms after the turn"
        request = chat_standin.requests[0]
        assert request.messages[-1] == {"role": "user", "content": "When are you open?"}
        assert "Thanks for calling." in request.messages[0]["content"]
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        await eventually(lambda: len(session.turns) >= 2)  # the reply's end mark echoed back
        assert [t["outcome"] for t in session.turns] == ["played", "played"]
        await call.hang_up()
        assert call.stats.invalid == []


@pytest.mark.slow
async def test_end_to_end_barge_in_closes_the_llm_stream_and_keeps_only_the_heard_words(
        chat_standin: StandInChatServer) -> None:
    from telephony.testing.bridge_harness import running_bridge
    from telephony.testing.twilio_emulator import TwilioEmulator
    from tests.test_call_e2e import caller_speech, session_of
    from tts_core.engines.synthetic import SyntheticEngine

    words = [f" Item {n} of a very long list." for n in range(1, 60)]
    chat_standin.script(Script(tokens=words, token_delay_s=0.05), Script(tokens=["Okay."]))
    async with running_bridge(engine=SyntheticEngine(realtime_factor=0.3), twilio_auth_token=None,
                              insecure_dev=True, default_agent="openai-chat",
                              llm_url=chat_standin.url) as rb:
        call = TwilioEmulator(rb.stream_url, call_sid="CA71", custom_parameters={"greeting": ""})
        await call.connect()
        assert await call.wait_for(lambda: "CA71" in [s.info.call_sid for s in rb.bridge.calls.values()])
        session = session_of(rb, "CA71")
        await session.agent.on_caller_speech(session, "List everything", True)
        first = await chat_standin.wait_requests(1)
        assert await call.wait_for(lambda: call.stats.media_received > 60)  # 1.2 s of the reply heard
        await call.stream_audio(caller_speech(0.6))  # the caller talks over it
        assert await call.wait_for(lambda: call.stats.clears >= 1, timeout=5)
        await asyncio.wait_for(first.client_closed.wait(), 3)  # the LLM server stops generating
        assert first.tokens_sent < len(words)
        await session.agent.on_caller_speech(session, "Okay, stop", True)
        second = await chat_standin.wait_requests(2)
        user, heard, again = second.messages[1:]
        full = "".join(words).split()
        print(f"heard before barge-in: {heard['content']!r} ({first.tokens_sent}/{len(words)} tokens sent, "
              f"{call.stats.utterances[0].frames} frames played)")
        assert heard["role"] == "assistant" and 2 <= len(heard["content"].split()) < len(full)
        assert heard["content"].split() == full[: len(heard["content"].split())], heard
        # ...and no more than the audio the caller heard could carry (the synthetic voice speaks
        # 0.06 s per character; allow one sentence for the speaker's word-level estimate).
        heard_s = call.stats.utterances[0].frames * 0.020
        assert len(heard["content"]) <= heard_s / 0.06 + len(words[0]), (heard, heard_s)
        assert (user["content"], again["content"]) == ("List everything", "Okay, stop")
        assert await call.wait_for(lambda: len(call.played_utterances()) >= 1, timeout=10)
        await call.hang_up()
        assert session.barge_ins == 1
