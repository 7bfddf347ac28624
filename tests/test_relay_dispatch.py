"""The dispatch of ConversationRelay messages: each typed message reaches its handler, and frames
that are not usable messages are answered with an ``error`` while the session goes on."""

from __future__ import annotations

import json
from typing import get_args

import pytest

from telephony.agents.relay.dispatch import SEND_DIGITS_UNSUPPORTED, dispatch, dispatch_frame
from telephony.relay_protocol import AgentMessage, End, Language, Play, SendDigits, Text

LIMIT = 1024


class RecordingHandler:
    """A handler that records which of its methods each message reached."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    async def on_text(self, message: Text) -> None:
        self.calls.append(("text", message))

    async def on_play(self, message: Play) -> None:
        self.calls.append(("play", message))

    async def on_end(self, message: End) -> None:
        self.calls.append(("end", message))

    async def report_error(self, description: str) -> None:
        self.calls.append(("error", description))


SAMPLES: dict[type, object] = {
    Text: Text(type="text", token="Hello", last=True),
    Play: Play(type="play", source="https://media.example/a.wav"),
    SendDigits: SendDigits(type="sendDigits", digits="12#"),
    Language: Language(type="language", tts_language="sv-SE"),
    End: End(type="end", handoff_data='{"reason":"done"}'),
}


def test_every_agent_message_class_has_a_sample() -> None:
    assert set(get_args(AgentMessage)) == set(SAMPLES)


@pytest.mark.parametrize(("message", "expected"), [
    (SAMPLES[Text], "text"),
    (SAMPLES[Play], "play"),
    (SAMPLES[End], "end"),
])
async def test_each_spoken_or_ending_message_reaches_its_own_handler(message, expected) -> None:
    handler = RecordingHandler()
    await dispatch(message, handler)
    assert handler.calls == [(expected, message)]


async def test_only_end_ends_the_session() -> None:
    for cls, message in SAMPLES.items():
        keep_reading = await dispatch(message, RecordingHandler())
        assert keep_reading is (cls is not End), cls.__name__


async def test_send_digits_is_answered_with_an_error_and_nothing_else() -> None:
    handler = RecordingHandler()
    await dispatch(SAMPLES[SendDigits], handler)
    assert handler.calls == [("error", SEND_DIGITS_UNSUPPORTED)]


async def test_language_is_answered_with_an_error_naming_the_language_asked_for() -> None:
    handler = RecordingHandler()
    await dispatch(SAMPLES[Language], handler)
    [(kind, description)] = handler.calls
    assert kind == "error"
    assert "'sv-SE'" in str(description) and "the call goes on" in str(description)


async def test_a_frame_is_parsed_then_dispatched() -> None:
    handler = RecordingHandler()
    keep_reading = await dispatch_frame(json.dumps({"type": "text", "token": "Hi", "last": True}),
                                        handler, max_bytes=LIMIT)
    assert keep_reading is True
    assert handler.calls == [("text", Text(type="text", token="Hi", last=True))]
    assert await dispatch_frame('{"type":"end"}', handler, max_bytes=LIMIT) is False
    assert handler.calls[-1] == ("end", End(type="end"))


@pytest.mark.parametrize(("frame", "expected"), [
    (b'{"type":"text","token":"a"}', "binary WebSocket frames are not supported"),
    ("{not json", "invalid message: message is not JSON"),
    ('{"type":"bogus"}', "invalid message: unknown message type 'bogus'"),
    ('{"type":"text","token":"' + "é" * 600 + '"}', "message too large: "),
])
async def test_an_unusable_frame_gets_one_error_and_the_session_goes_on(frame, expected) -> None:
    handler = RecordingHandler()
    assert await dispatch_frame(frame, handler, max_bytes=LIMIT) is True
    [(kind, description)] = handler.calls
    assert kind == "error" and str(description).startswith(expected), description
