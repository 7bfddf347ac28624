"""An in-process agent used by the tests (selected as ``python:tests.sample_agents:EchoDigitsAgent``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from telephony.agents import Agent, CallControl, SpeechOutcome


class EchoDigitsAgent(Agent):
    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        async def tokens() -> AsyncIterator[str]:
            for token in ["You ", "pressed ", digit, "."]:
                yield token

        result = await call.say(tokens())
        assert result.outcome in (SpeechOutcome.PLAYED, SpeechOutcome.INTERRUPTED, SpeechOutcome.CANCELLED)
