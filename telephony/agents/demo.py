"""The built-in demo agent: a newcomer hears something on a real call without writing code.

The bridge speaks the ``greeting`` parameter itself (as ConversationRelay's welcomeGreeting); the
demo reads back every key pressed and says goodbye on ``#``.
"""

from __future__ import annotations

from telephony.agents.base import Agent, CallControl

DIGIT_WORDS = {"*": "star", "#": "pound"}


class DemoAgent(Agent):
    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        if digit == "#":
            await call.say("Thanks for calling. Goodbye!", interruptible=False)
            await call.end("demo: caller pressed pound")
            return
        await call.say(f"You pressed {DIGIT_WORDS.get(digit, digit)}.")
