"""The built-in demo agent: a newcomer's first real call is a conversation, without writing code.

The bridge speaks the ``greeting`` parameter itself (as ConversationRelay's welcomeGreeting); the
demo answers what the caller says (a few canned answers, otherwise it repeats what it heard, so the
caller hears how well they were understood), reads back every key pressed, and says goodbye on
``#`` or when the caller says goodbye, then hangs up (through Twilio's REST API when
TWILIO_ACCOUNT_SID is set; otherwise by closing the stream, which ends a call whose TwiML has
nothing after ``<Connect>``).
"""

from __future__ import annotations

import re
import time

from telephony.agents.base import Agent, CallControl

DIGIT_WORDS = {"*": "star", "#": "pound"}
GOODBYE = "Thanks for calling. Goodbye!"


def demo_answer(text: str) -> tuple[str, bool]:
    """What the demo says to ``text``, and whether it then hangs up."""
    words = set(re.findall(r"[a-z']+", text.lower()))
    if words & {"bye", "goodbye"}:
        return GOODBYE, True
    if words & {"help", "what"} and words & {"help", "can", "do"}:
        return ("Say anything and I will tell you what I heard. Press a key and I will read it back. "
                "Say goodbye to hang up."), False
    if "time" in words:
        return f"It is {time.strftime('%H:%M', time.gmtime())} UTC.", False
    if words & {"hello", "hi", "hey"} and len(words) <= 4:
        return "Hello! Nice to hear you. Say something and I will repeat it.", False
    return f"You said: {text.strip()}", False


class DemoAgent(Agent):
    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        if digit == "#":
            await call.say(GOODBYE, interruptible=False)
            await call.end("demo: caller pressed pound", hangup=True)
            return
        await call.say(f"You pressed {DIGIT_WORDS.get(digit, digit)}.")

    async def on_caller_speech(self, call: CallControl, text: str, final: bool) -> None:
        if not final:
            return
        answer, hang_up = demo_answer(text)
        if hang_up:
            await call.say(answer, interruptible=False)
            await call.end("demo: caller said goodbye", hangup=True)
            return
        await call.say(answer)
