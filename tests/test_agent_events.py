"""Agent events are typed and reach their hooks in order (telephony/agents/events.py,
telephony/agent_inbox.py); a failing agent ends delivery, a buggy hook does not."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from telephony.agent_inbox import AGENT_EVENT_QUEUE, AgentInbox
from telephony.agents.base import Agent, AgentError, CallControl
from telephony.agents.events import (
    AgentEvent,
    CallerSpeech,
    CallStarted,
    CallStopped,
    DtmfDigit,
    Interrupted,
    deliver,
)
from tts_core.errors import UpstreamFailed

CALL: Any = SimpleNamespace(info=SimpleNamespace(call_sid="CA1"))


class RecordingAgent(Agent):
    def __init__(self, fail_on: str | None = None, crash_on: str | None = None) -> None:
        self.heard: list[tuple[object, ...]] = []
        self.fail_on = fail_on
        self.crash_on = crash_on
        self.done = asyncio.Event()

    def _hear(self, *what: object) -> None:
        self.heard.append(what)
        if what[0] == self.fail_on:
            raise AgentError("the agent went away")
        if what[0] == self.crash_on:
            raise KeyError("a bug in the hook")

    async def on_start(self, call: CallControl) -> None:
        self._hear("start")

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        self._hear("dtmf", digit)

    async def on_interrupt(self, call: CallControl, heard_text: str, played_ms: int) -> None:
        self._hear("interrupt", heard_text, played_ms)

    async def on_caller_speech(self, call: CallControl, text: str, final: bool) -> None:
        self._hear("speech", text, final)
        if text == "last":
            self.done.set()

    async def on_stop(self, call: CallControl) -> None:
        self._hear("stop")


@pytest.mark.parametrize(("event", "hook"), [
    (CallStarted(), ("start",)),
    (DtmfDigit("#"), ("dtmf", "#")),
    (Interrupted("Hello the", 640), ("interrupt", "Hello the", 640)),
    (CallerSpeech("book a table", True), ("speech", "book a table", True)),
    (CallStopped(), ("stop",)),
])
async def test_each_event_reaches_its_own_hook_with_its_fields(
        event: AgentEvent, hook: tuple[object, ...]) -> None:
    agent = RecordingAgent()
    await deliver(agent, CALL, event)
    assert agent.heard == [hook]


def inbox_for(agent: Agent) -> tuple[AgentInbox, list[str], list[AgentError]]:
    errors: list[str] = []
    failures: list[AgentError] = []
    return AgentInbox(agent, CALL, on_error=errors.append, on_agent_failed=failures.append), errors, failures


async def test_events_are_delivered_one_at_a_time_in_order() -> None:
    agent = RecordingAgent()
    inbox, errors, _ = inbox_for(agent)
    inbox.start()
    for event in [CallStarted(), DtmfDigit("1"), CallerSpeech("hi", False), CallerSpeech("last", True)]:
        inbox.post(event)
    await asyncio.wait_for(agent.done.wait(), 5)
    assert agent.heard == [("start",), ("dtmf", "1"), ("speech", "hi", False), ("speech", "last", True)]
    assert errors == []
    assert inbox.task is not None
    inbox.task.cancel()


async def test_an_agent_error_ends_delivery_and_reports_the_failure() -> None:
    agent = RecordingAgent(fail_on="dtmf")
    inbox, errors, failures = inbox_for(agent)
    inbox.start()
    for event in [DtmfDigit("1"), CallerSpeech("last", True)]:
        inbox.post(event)
    assert inbox.task is not None
    await asyncio.wait_for(inbox.task, 5)  # the delivery task returns: nothing more is delivered
    assert agent.heard == [("dtmf", "1")]
    assert errors == ["agent"]
    assert [str(f) for f in failures] == ["the agent went away"]
    assert failures[0].ws_close_code == UpstreamFailed.ws_close_code == 1011


async def test_a_bug_in_one_hook_is_counted_and_delivery_goes_on() -> None:
    agent = RecordingAgent(crash_on="dtmf")
    inbox, errors, failures = inbox_for(agent)
    inbox.start()
    for event in [DtmfDigit("1"), CallerSpeech("last", True)]:
        inbox.post(event)
    await asyncio.wait_for(agent.done.wait(), 5)
    assert errors == ["agent_hook"] and failures == []
    assert inbox.task is not None
    inbox.task.cancel()


def test_an_agent_far_behind_loses_events_and_they_are_counted() -> None:
    inbox, errors, _ = inbox_for(RecordingAgent())  # not started: nothing is taken off the queue
    for _ in range(AGENT_EVENT_QUEUE + 2):
        inbox.post(DtmfDigit("5"))
    assert errors == ["agent_event_overflow"] * 2
