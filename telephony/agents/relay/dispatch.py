"""One frame from the agent → a typed message → the handler for its class.

Why a module of its own: this is the whole of "what the bridge does with each ConversationRelay
message", in one ``match`` over the message classes of ``telephony.relay_protocol`` (checked
exhaustive by the type checker through ``assert_never``), instead of string tags compared in an
if/elif chain. Frames that are not a usable message are answered with an ``error`` and the session
goes on; only ``end`` ends it. What each message does lives in the handler (``RelaySession``).
"""

from __future__ import annotations

from typing import Protocol, assert_never

from telephony.relay_protocol import (
    AgentMessage,
    End,
    Language,
    Play,
    RelayProtocolError,
    SendDigits,
    Text,
    parse_agent_frame,
)

SEND_DIGITS_UNSUPPORTED = (
    "sendDigits is not supported by voice-bridge: Twilio sends digits only with a TwiML "
    "<Play digits>, which would replace this call's TwiML and end the media stream"
)


def language_unsupported(message: Language) -> str:
    """The ``error`` for a ``language`` message (the voice has one language; the call goes on)."""
    return ("language switching is not supported by this voice: "
            f"ttsLanguage={message.tts_language!r} ignored; the call goes on unchanged")


class RelayHandler(Protocol):
    """What the dispatcher needs from the session it feeds."""

    async def on_text(self, message: Text) -> None: ...

    async def on_play(self, message: Play) -> None: ...

    async def on_end(self, message: End) -> None: ...

    async def report_error(self, description: str) -> None: ...


async def dispatch(message: AgentMessage, handler: RelayHandler) -> bool:
    """Hand ``message`` to ``handler``; False once the session is over (after ``end``)."""
    match message:
        case Text():
            await handler.on_text(message)
        case Play():
            await handler.on_play(message)
        case SendDigits():
            await handler.report_error(SEND_DIGITS_UNSUPPORTED)
        case Language():
            await handler.report_error(language_unsupported(message))
        case End():
            await handler.on_end(message)
            return False
        case _:
            assert_never(message)
    return True


async def dispatch_frame(frame: str | bytes, handler: RelayHandler, *, max_bytes: int) -> bool:
    """Parse one WebSocket frame and dispatch it; a frame that is not a usable message (binary,
    over ``max_bytes``, invalid) is answered with an ``error``. False once the session is over."""
    try:
        message = parse_agent_frame(frame, max_bytes=max_bytes)
    except RelayProtocolError as exc:
        await handler.report_error(exc.message)
        return True
    return await dispatch(message, handler)
