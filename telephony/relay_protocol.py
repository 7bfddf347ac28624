"""ConversationRelay, the wire protocol toward agent applications: typed messages both ways.

voice-bridge plays Twilio's role (the agent app is the WebSocket server), so an application written
for Twilio ConversationRelay can use our voice unchanged. Field names follow Twilio's docs
(camelCase on the wire, snake_case here).

This module is the only place that turns wire text into messages and messages into wire text:
``serialize`` for what we send (``ToAgentMessage``), ``parse_agent_frame`` / ``parse_agent_message``
for what we receive (``AgentMessage``). Everything past it works with the typed messages, so a
dispatcher can ``match`` on their classes instead of comparing string tags.
"""

from __future__ import annotations

import json
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

from telephony.untrusted import has_lone_surrogate
from tts_core.errors import InvalidInput, TooLarge


class RelayProtocolError(InvalidInput, ValueError):
    """An agent message we cannot use; the text is sent back to the agent as an ``error`` (the
    session goes on). ``ValueError`` stays a base for callers that still catch that."""


class RelayMessageTooLarge(RelayProtocolError, TooLarge):
    """A text frame over the relay's per-message limit (answered with an ``error``, not a close)."""


_CONFIG = ConfigDict(
    alias_generator=AliasGenerator(alias=to_camel),
    populate_by_name=True,
    frozen=True,
)


class _ToAgent(BaseModel):
    model_config = _CONFIG

    def to_json(self) -> str:
        """This message as the agent receives it (see ``serialize``)."""
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True), separators=(",", ":"))


class Setup(_ToAgent):
    type: Literal["setup"] = "setup"
    session_id: str
    account_sid: str = ""
    call_sid: str
    parent_call_sid: str = ""
    from_: str = Field("", validation_alias=AliasChoices("from", "from_"), serialization_alias="from")
    """``from`` on the wire (a Python keyword, hence the underscore here)."""
    to: str = ""
    forwarded_from: str = ""
    call_type: str = "PSTN"
    caller_name: str = ""
    direction: str = "inbound"
    call_status: str = "IN-PROGRESS"
    custom_parameters: dict[str, str] = Field(default_factory=dict)


class Prompt(_ToAgent):
    type: Literal["prompt"] = "prompt"
    voice_prompt: str
    lang: str = "en-US"
    last: bool = True


class Dtmf(_ToAgent):
    type: Literal["dtmf"] = "dtmf"
    digit: str


class Interrupt(_ToAgent):
    type: Literal["interrupt"] = "interrupt"
    utterance_until_interrupt: str
    duration_until_interrupt_ms: int


class Error(_ToAgent):
    type: Literal["error"] = "error"
    description: str


# ---- from the agent ----------------------------------------------------------------------------------
def _boolish(value: object) -> bool:
    """Twilio's docs show both JSON booleans and "true"/"false" strings; accept those, nothing else
    (pydantic's lax bool would also take 1, "yes", "on"...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise ValueError("must be a boolean (true/false or \"true\"/\"false\")")


def _interruptible(value: object) -> bool:
    """Like ``_boolish``, plus ConversationRelay's newer "none" | "dtmf" | "speech" | "any": the
    bridge barges in on caller speech, so "speech" and "any" mean interruptible."""
    if isinstance(value, str) and value.strip().lower() in {"none", "dtmf", "speech", "any"}:
        return value.strip().lower() in {"speech", "any"}
    return _boolish(value)


class _FromAgent(BaseModel):
    model_config = ConfigDict(**_CONFIG, extra="ignore", strict=False)


class Text(_FromAgent):
    type: Literal["text"]
    token: str
    last: bool = False
    lang: str | None = None
    interruptible: bool = True
    preemptible: bool = False

    _bools = field_validator("last", "preemptible", mode="before")(lambda cls, v: _boolish(v))
    _interrupt = field_validator("interruptible", mode="before")(lambda cls, v: _interruptible(v))

    @field_validator("token", mode="before")
    @classmethod
    def _token_is_text(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("token must be a string")
        return value


class Play(_FromAgent):
    type: Literal["play"]
    source: str
    loop: int | None = Field(1, ge=0, le=1000)
    interruptible: bool = True
    preemptible: bool = False

    _bools = field_validator("preemptible", mode="before")(lambda cls, v: _boolish(v))
    _interrupt = field_validator("interruptible", mode="before")(lambda cls, v: _interruptible(v))

    @field_validator("loop", mode="before")
    @classmethod
    def _loop_is_count(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("loop must be a number")
        return value

    @field_validator("source")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError("source must be an http(s) URL") from None
        if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
            raise ValueError("source must be an http(s) URL")
        return value


class SendDigits(_FromAgent):
    type: Literal["sendDigits"]
    digits: str = Field(pattern=r"^[0-9*#wW]{1,64}$")


class Language(_FromAgent):
    type: Literal["language"]
    tts_language: str | None = None
    transcription_language: str | None = None


class End(_FromAgent):
    type: Literal["end"]
    handoff_data: str | None = None

    @field_validator("handoff_data", mode="before")
    @classmethod
    def _stringify(cls, value: object) -> object:
        return value if value is None or isinstance(value, str) else json.dumps(value)


ToAgentMessage = Setup | Prompt | Dtmf | Interrupt | Error
"""Every message voice-bridge sends an agent application."""
AgentMessage = Text | Play | SendDigits | Language | End
"""Every message an agent application may send voice-bridge."""
_BY_TYPE: dict[str, type[AgentMessage]] = {
    "text": Text, "play": Play, "sendDigits": SendDigits, "language": Language, "end": End,
}


def serialize(message: ToAgentMessage) -> str:
    """The WebSocket text frame for ``message``: compact JSON, Twilio's field names, no nulls."""
    return message.to_json()


def parse_agent_frame(frame: str | bytes, *, max_bytes: int) -> AgentMessage:
    """One WebSocket frame from an agent, as a message, or ``RelayProtocolError`` whose text is
    the ``error`` to send back: binary frames, frames over ``max_bytes`` (``RelayMessageTooLarge``)
    and invalid messages are each named for what they are."""
    if isinstance(frame, bytes):
        raise RelayProtocolError("binary WebSocket frames are not supported; send JSON text messages")
    size = len(frame.encode())
    if size > max_bytes:
        raise RelayMessageTooLarge(f"message too large: {size} bytes (limit {max_bytes})")
    try:
        return parse_agent_message(frame)
    except RelayProtocolError as exc:
        raise RelayProtocolError(f"invalid message: {exc}") from None


def parse_agent_message(raw: str | bytes) -> AgentMessage:
    """Parse one message from an agent, or raise RelayProtocolError saying what is wrong."""
    if isinstance(raw, bytes | bytearray):
        raise RelayProtocolError("binary messages are not part of the protocol; send JSON text")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: also an int literal over 4,300 digits
        raise RelayProtocolError(f"message is not JSON (or a number in it is too long): "
                                 f"{raw[:60]!r}") from None
    if not isinstance(message, dict):
        raise RelayProtocolError("message is not a JSON object")
    if has_lone_surrogate(message):
        raise RelayProtocolError("message holds a lone UTF-16 surrogate (not valid Unicode)")
    kind = message.get("type")
    model = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise RelayProtocolError(f"unknown message type {str(kind)[:40]!r}; expected one of "
                                 f"{', '.join(_BY_TYPE)}")
    try:
        return model.model_validate(message)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RelayProtocolError(f"invalid {kind} message: {problems}") from None
