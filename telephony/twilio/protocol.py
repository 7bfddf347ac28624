"""Twilio Media Streams, the wire protocol: typed inbound messages and exact outbound messages.

Translation only, no I/O (as Pipecat keeps its serializer apart from transports). Inbound messages
tolerate extra fields (Twilio adds some over time); outbound messages carry exactly Twilio's
documented fields, since anything extra draws warning 31951.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from telephony.untrusted import has_lone_surrogate
from tts_core.audio.telephony_format import FRAME_BYTES, TELEPHONY_RATE
from tts_core.errors import InvalidInput

MEDIA_ENCODING = "audio/x-mulaw"
"""The only ``mediaFormat.encoding`` a bidirectional stream carries (8 kHz mono, see telephony_format)."""
MAX_PAYLOAD_BYTES = 16000
"""Twilio sends 160-byte (20 ms) payloads; anything near this size is not a phone call."""
MAX_COUNTER = 2**63 - 1
MAX_COUNTER_DIGITS = len(str(MAX_COUNTER)) - 1
"""Media ``chunk``/``timestamp`` are counters: 18 digits is ~9 million years of 20 ms chunks, and
``int()`` of a longer digit string is where a 5,000-digit one used to raise ValueError."""


class ProtocolError(InvalidInput, ValueError):
    """A message we cannot use. ``violation`` is the metric label (``malformed_json``,
    ``invalid_base64``, ...); the call carries on unless the caller decides the violation makes the
    call meaningless. Before ``start`` it refuses the stream with ``ws_close_code`` (1008)."""

    kind = "protocol_error"

    def __init__(self, violation: str, message: str) -> None:
        super().__init__(message)
        self.violation = violation


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Connected(_Inbound):
    event: Literal["connected"]
    protocol: str = ""
    version: str = ""


class MediaFormat(_Inbound):
    encoding: str
    sample_rate: int = Field(alias="sampleRate")
    channels: int = 1


class Start(_Inbound):
    event: Literal["start"] = "start"
    stream_sid: str = Field(alias="streamSid", min_length=1)
    call_sid: str = Field(alias="callSid", min_length=1)
    account_sid: str = Field("", alias="accountSid")
    tracks: list[str] = Field(default_factory=list)
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")
    media_format: MediaFormat = Field(alias="mediaFormat")

    @field_validator("custom_parameters", mode="before")
    @classmethod
    def _stringify(cls, value: object) -> object:
        if value is None:
            return {}
        if isinstance(value, dict):
            return {str(k): "" if v is None else str(v) for k, v in value.items()}
        return value

    def is_supported_format(self) -> bool:
        fmt = self.media_format
        return (fmt.encoding == MEDIA_ENCODING and fmt.sample_rate == TELEPHONY_RATE
                and fmt.channels == 1)


@dataclass(frozen=True, slots=True)
class Media:
    """Caller audio, 50 a second per call: a plain slotted dataclass, validated by hand in
    ``_parse_media`` (a pydantic model cost several µs per message on this hot path)."""

    event: Literal["media"] = "media"
    stream_sid: str = ""
    track: str = "inbound"
    chunk: int | None = None
    timestamp: int | None = None
    payload: bytes = b""


class Dtmf(_Inbound):
    event: Literal["dtmf"] = "dtmf"
    stream_sid: str = ""
    digit: str = Field(pattern=r"^[0-9*#A-Da-d]$")


class Mark(_Inbound):
    event: Literal["mark"] = "mark"
    stream_sid: str = ""
    name: str


class Stop(_Inbound):
    event: Literal["stop"] = "stop"
    stream_sid: str = ""
    call_sid: str = Field("", alias="callSid")
    account_sid: str = Field("", alias="accountSid")


InboundMessage = Connected | Start | Media | Dtmf | Mark | Stop


def _int_field(body: dict[str, object], key: str) -> int | None:
    """Twilio sends counters as decimal strings ("5"); accept those and ints, refuse anything else."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNTER:
        return value
    if (isinstance(value, str) and value.isascii() and value.isdigit()
            and len(value) <= MAX_COUNTER_DIGITS):
        return int(value)
    raise ProtocolError("invalid_field",
                        f"media.{key} must be a non-negative integer or decimal string (64-bit)")


def base64_limit(max_payload_bytes: int) -> int:
    """Length of the base64 text of ``max_payload_bytes`` bytes (padded): longer text is oversize."""
    return 4 * -(-max_payload_bytes // 3)


def parse_inbound(
    raw: str | bytes | None, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> InboundMessage:
    """Parse one message from Twilio, or raise ProtocolError with a countable ``violation``."""
    if raw is None or isinstance(raw, bytes | bytearray):
        raise ProtocolError("binary_frame", "binary WebSocket frames are not part of the protocol")
    try:
        message: object = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: also an int literal over 4,300 digits
        raise ProtocolError("malformed_json", f"not JSON: {raw[:60]!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed_json", "message is not a JSON object")
    event = message.get("event")
    stream_sid = message.get("streamSid", "")
    if not isinstance(stream_sid, str):
        raise ProtocolError("invalid_field", "streamSid must be a string")
    try:
        if event == "media":
            return _parse_media(message, stream_sid, max_payload_bytes)
        if event == "start":
            body = message.get("start")
            if not isinstance(body, dict):
                raise ProtocolError("invalid_field", "start without a start object")
            if has_lone_surrogate(body):  # its parameters reach the engine, the agent and the logs
                raise ProtocolError("invalid_text", "start holds a lone UTF-16 surrogate")
            return Start.model_validate({"streamSid": stream_sid, **body})
        if event == "mark":
            return Mark.model_validate({"stream_sid": stream_sid,
                                        "name": _field(message, "mark", "name")})
        if event == "dtmf":
            return Dtmf.model_validate({"stream_sid": stream_sid,
                                        "digit": _field(message, "dtmf", "digit")})
        if event == "stop":
            body = message.get("stop")
            return Stop.model_validate({**(body if isinstance(body, dict) else {}),
                                        "stream_sid": stream_sid})
        if event == "connected":
            return Connected.model_validate(message)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError("invalid_field", f"{event}: {where}: {first['msg']}") from None
    raise ProtocolError("unknown_event", f"unknown event {str(event)[:40]!r}")


def _field(message: dict[str, object], obj: str, key: str) -> object:
    body = message.get(obj)
    if not isinstance(body, dict) or key not in body:
        raise ProtocolError("invalid_field", f"{message.get('event')}: missing {obj}.{key}")
    return body[key]


def _parse_media(message: dict[str, object], stream_sid: str, max_payload_bytes: int) -> Media:
    body = message.get("media")
    if not isinstance(body, dict):
        raise ProtocolError("invalid_field", "media without a media object")
    payload = body.get("payload")
    if not isinstance(payload, str):
        raise ProtocolError("invalid_field", "media.payload must be a base64 string")
    # Size is checked on the text, before decoding anything (a hostile frame costs nothing).
    if len(payload) > base64_limit(max_payload_bytes):
        raise ProtocolError("oversize_payload", f"media payload of {len(payload)} base64 chars")
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_base64", "media.payload is not valid base64") from None
    if len(payload) % 4 or payload.endswith("==="):  # Python 3.11's strict mode still lets surplus
        # padding through ("AAAA=", "AAAA==", "AAAA====")
        raise ProtocolError("invalid_base64", "media.payload has surplus '=' padding")
    if len(audio) > max_payload_bytes:  # unpadded text can decode to a little more than the limit
        raise ProtocolError("oversize_payload", f"media payload of {len(audio)} bytes")
    track = body.get("track", "inbound")
    if not isinstance(track, str):
        raise ProtocolError("invalid_field", "media.track must be a string")
    return Media(
        event="media", stream_sid=stream_sid, track=track,
        chunk=_int_field(body, "chunk"), timestamp=_int_field(body, "timestamp"), payload=audio,
    )


@dataclass(frozen=True, slots=True)
class SendMedia:
    """One frame of caller-bound audio: exactly ``FRAME_BYTES`` of μ-law (20 ms)."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class SendMark:
    """Ask Twilio to echo ``name`` once everything sent before it has been played."""

    name: str


@dataclass(frozen=True, slots=True)
class SendClear:
    """Drop the audio Twilio has buffered (barge-in); Twilio echoes every pending mark."""


OutboundMessage = SendMedia | SendMark | SendClear
"""Everything we may send on a stream: Twilio documents exactly these three."""


class OutboundEncoder:
    """Exact outbound messages for one stream, with the JSON around the payload built once.

    ``encode`` takes a typed message; ``media``/``mark``/``clear`` are the same, without building a
    message object, for the pacer's 50-a-second path."""

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        sid = json.dumps(stream_sid)
        self._media_prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'
        self._clear = '{"event":"clear","streamSid":' + sid + "}"

    def media(self, frame: bytes) -> str:
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"a media frame must be {FRAME_BYTES} bytes, got {len(frame)}")
        # binascii directly, decoded as latin-1 (base64 is ASCII): ~0.3 µs less per frame
        return self._media_prefix + binascii.b2a_base64(frame, newline=False).decode("latin-1") + '"}}'

    def mark(self, name: str) -> str:
        return self._mark_prefix + json.dumps(name) + "}}"

    def clear(self) -> str:
        return self._clear

    def encode(self, message: OutboundMessage) -> str:
        """The wire text of ``message`` on this stream."""
        match message:
            case SendMedia(frame):
                return self.media(frame)
            case SendMark(name):
                return self.mark(name)
            case SendClear():
                return self.clear()


def media_message(stream_sid: str, frame: bytes) -> str:
    return OutboundEncoder(stream_sid).media(frame)


def mark_message(stream_sid: str, name: str) -> str:
    return OutboundEncoder(stream_sid).mark(name)


def clear_message(stream_sid: str) -> str:
    return OutboundEncoder(stream_sid).clear()


__all__ = [
    "MAX_COUNTER",
    "MAX_COUNTER_DIGITS",
    "MAX_PAYLOAD_BYTES",
    "MEDIA_ENCODING",
    "Connected",
    "Dtmf",
    "InboundMessage",
    "Mark",
    "Media",
    "MediaFormat",
    "OutboundEncoder",
    "OutboundMessage",
    "ProtocolError",
    "SendClear",
    "SendMark",
    "SendMedia",
    "Start",
    "Stop",
    "base64_limit",
    "clear_message",
    "mark_message",
    "media_message",
    "parse_inbound",
]
