"""Stand-in agents for tests and benchmarks: one in-process ``Agent`` and two loopback
ConversationRelay agents (serve one with ``websockets.serve(agent.handler, "127.0.0.1", 0)`` and
pass its URL as the call's ``agentUrl``).

They are deliberately simple and deterministic, so a measure taken with one (time to first audio,
what the recogniser heard) is the bridge's, not the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import websockets

from telephony.agents import Agent, CallControl, SpeechOutcome


class EchoDigitsAgent(Agent):
    """In-process (``python:telephony.testing.fake_agents:EchoDigitsAgent``): says "You pressed N."
    for every key the caller presses, streamed as four tokens."""

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        async def tokens() -> AsyncIterator[str]:
            for token in ["You ", "pressed ", digit, "."]:
                yield token

        result = await call.say(tokens())
        assert result.outcome in (SpeechOutcome.PLAYED, SpeechOutcome.INTERRUPTED, SpeechOutcome.CANCELLED)


def word_tokens(text: str) -> list[str]:
    """LLM-like tokens: each word with its leading space."""
    words = text.split(" ")
    return [word if index == 0 else " " + word for index, word in enumerate(words)]


class OneTurnAgent:
    """Says one turn per call: ``delay_s`` after the bridge's ``setup`` (the caller has spoken, the
    LLM starts), ``text_for(call_sid)`` in the tokens ``tokens_for(call_sid, text)`` gives, one
    every ``token_gap_s``; then listens until the call ends. ``first_token_sent[call_sid]`` is when
    the turn's first token went out: where the bridge's time to first audio starts."""

    def __init__(self, text_for: Callable[[str], str], *, delay_s: float = 0.3, token_gap_s: float = 0.03,
                 tokens_for: Callable[[str, str], list[str]] | None = None) -> None:
        self.text_for = text_for
        self.delay_s = delay_s
        self.token_gap_s = token_gap_s
        self.tokens_for = tokens_for or (lambda _call_sid, text: word_tokens(text))
        self.first_token_sent: dict[str, float] = {}

    async def handler(self, ws: websockets.ServerConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):  # the call may hang up mid-turn
            setup = json.loads(await ws.recv())
            call_sid = setup["callSid"]
            tokens = self.tokens_for(call_sid, self.text_for(call_sid))
            await asyncio.sleep(self.delay_s)
            for index, token in enumerate(tokens):
                if index == 0:
                    self.first_token_sent[call_sid] = time.monotonic()
                else:
                    await asyncio.sleep(self.token_gap_s)
                await ws.send(json.dumps({"type": "text", "token": token, "last": index == len(tokens) - 1}))
            async for _ in ws:
                pass


@dataclass
class PromptRecorder:
    """Says nothing; records every ``prompt`` (what the bridge's recogniser heard) with its arrival
    time, per call."""

    prompts: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)

    async def handler(self, ws: websockets.ServerConnection) -> None:
        call_sid = ""
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "setup":
                call_sid = message["callSid"]
                self.prompts[call_sid] = []
            elif message.get("type") == "prompt":
                self.prompts[call_sid].append((time.monotonic(), message))
