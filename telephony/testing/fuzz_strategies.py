"""Hypothesis strategies for fuzzing the bridge's untrusted surfaces (tests/test_fuzz.py and
scripts/fuzz.py): webhook forms and queries, operator and /v1 bodies, Media Stream messages and
``start`` mutations, and ConversationRelay agent messages.

Sizes are kept small on purpose: a valid text still gets synthesised, and the suite must stay fast.
Every strategy mixes well-formed messages with one field changed (what finds edge cases in real
code paths) and plain garbage (what finds parsers that trust their input).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

BIG = "9" * 5000  # an integer literal over Python's 4,300-digit int->str limit
NASTY_TEXTS = ["", " ", "\x00", "\ud800", "é" * 70, "😀" * 40, "<Say>x</Say>", "&amp;", "]]>", "%00",
               "../../etc/passwd", "http://169.254.169.254/latest", "ws://", "ws:///x", "NaN", "-0",
               "1e999", "true", "null", "[]", "{}"]
NASTY_RAW = ["{", "[", "nul", '{"event": ', '{"event": "media", "media": {"payload": "@@@"}}',
             "[" * 3000 + "]" * 3000, '{"a": ' * 500 + "1" + "}" * 500, "[" + BIG + "]",
             '{"event": "media", "media": {"chunk": ' + BIG + "}}", '{"type": "text", "token": ' + BIG + "}",
             '"\\ud800"', '{"\\udfff": 1}', "\ufeff{}", "{}" * 100]

XML_ILLEGAL = [chr(i) for i in range(32) if i not in (9, 10, 13)] + ["\ufffe", "\uffff"]
control_text = st.one_of(
    st.text(st.one_of(st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Co"]), st.characters()),
            max_size=20),
    st.tuples(st.text(max_size=8), st.sampled_from(XML_ILLEGAL), st.text(max_size=8)).map("".join))
"""Text rich in control and format characters, XML-illegal ones included (plain ``st.text`` rarely
draws them)."""
short_text = st.one_of(st.text(max_size=24), control_text, st.sampled_from(NASTY_TEXTS))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=True, allow_infinity=True), short_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any] | list[Any]) -> dict[str, Any] | list[Any]:
    """``template`` with some keys dropped, some values replaced (recursively), some keys added
    (a list template: items kept, replaced or dropped, some appended)."""
    if isinstance(template, list):
        items = [draw(st.sampled_from([item, None, draw(json_values)])) for item in template]
        return [i for i in items if i is not None] + draw(st.lists(json_values, max_size=2))
    out: dict[str, Any] = {}
    for key, value in template.items():
        action = draw(st.sampled_from(["keep", "keep", "keep", "drop", "replace", "recurse"]))
        if action == "keep":
            out[key] = value
        elif action == "replace":
            out[key] = draw(json_values)
        elif action == "recurse" and isinstance(value, dict):
            out[key] = draw(mutated(value))
        elif action == "recurse":
            out[key] = draw(json_values)
    extra = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2))
    return {**out, **extra}


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def encoded(value: Any) -> bytes:
    """A JSON body's bytes (lone surrogates kept as their invalid UTF-8)."""
    return dumps(value).encode("utf-8", "surrogatepass")


def messages_from(templates: list[dict[str, Any]]) -> st.SearchStrategy[str | bytes]:
    """One wire message: a mutated template, any JSON, text that is not JSON, bytes, or a nasty one."""
    return st.one_of(
        st.sampled_from(templates).flatmap(mutated).map(dumps),
        st.sampled_from(templates).map(dumps),
        json_values.map(dumps),
        st.text(max_size=60),
        st.binary(max_size=60),
        st.sampled_from(NASTY_RAW),
    )


# ---- webhook ---------------------------------------------------------------------------------------
QUERY_KEYS = ["voice", "preset", "greeting", "agentUrl", "partialPrompts", "CallSid"]
FORM_KEYS = ["CallSid", "AccountSid", "From", "To", "Direction", "CallStatus", "ApiVersion"]
form_values = st.one_of(st.text(max_size=30), control_text, st.sampled_from(NASTY_TEXTS), st.just("CAfuzz"))
VALID_FORM = {"CallSid": "CAfuzz", "AccountSid": "AC1", "From": "+15550001111", "To": "+15550002222",
              "Direction": "inbound"}
VALID_QUERY = {"voice": "synthetic", "preset": "fast", "greeting": "Hi.", "agentUrl": "demo",
               "partialPrompts": "false"}
query_values = st.one_of(st.text(max_size=30), control_text, st.sampled_from(NASTY_TEXTS),
                         st.sampled_from(["synthetic", "fast", "demo", "true", "false"]))


def one_field_changed(valid: dict[str, str],
                      values: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, str]]:
    """``valid`` with one field's value replaced: gets past the checks of the others."""
    return st.tuples(st.sampled_from(sorted(valid)), values).map(lambda kv: {**valid, kv[0]: kv[1]})


webhook_cases = st.fixed_dictionaries({
    "form": st.one_of(st.just(VALID_FORM), one_field_changed(VALID_FORM, form_values),
                      st.dictionaries(st.one_of(st.sampled_from(FORM_KEYS), st.text(max_size=12)),
                                      form_values, max_size=6)),
    "query": st.one_of(
        one_field_changed(VALID_QUERY, st.one_of(control_text, query_values)),
        one_field_changed(VALID_QUERY, control_text),
        st.dictionaries(st.one_of(st.sampled_from(QUERY_KEYS), st.text(max_size=8)), query_values,
                        max_size=4)),
    "signed": st.sampled_from([True, True, True, False]),
    "raw": st.one_of(st.none(), st.none(), st.none(), st.binary(max_size=200)),
})
"""A /twiml request: form fields (or a raw body instead), query parameters, signed or not."""

# ---- operator endpoints and /v1/audio/speech ---------------------------------------------------------
body_bytes = st.one_of(st.binary(max_size=120), st.text(max_size=120).map(str.encode),
                       st.sampled_from(NASTY_RAW).map(lambda s: s.encode("utf-8", "surrogatepass")))
operator_cases = st.fixed_dictionaries({
    "path": st.sampled_from(["/warmup", "/preload"]),
    "body": st.one_of(
        st.sampled_from([{"voice": "synthetic"}, {"preset": "fast"}, {"voices": ["synthetic"]},
                         ["synthetic"], {}]).flatmap(mutated).map(encoded),
        json_values.map(encoded), body_bytes),
    "key": st.sampled_from(["valid", "valid", "none", "wrong"]),
})
SPEECH_TEMPLATE = {"model": "tts-1", "voice": "synthetic", "input": "Hello there.",
                   "response_format": "pcm", "speed": 1.0}
speech_cases = st.one_of(
    mutated(SPEECH_TEMPLATE).map(encoded),
    st.fixed_dictionaries({"model": st.just("tts-1"), "voice": st.just("synthetic"),
                           "input": st.text(max_size=40),
                           "response_format": st.sampled_from(["pcm", "wav", "mp3", "opus", "flac", "aac",
                                                               "ulaw", "x"]),
                           "speed": st.one_of(st.floats(allow_nan=True), st.integers())}).map(
        encoded),
    json_values.map(encoded), body_bytes)

# ---- Media Stream ----------------------------------------------------------------------------------
TWILIO_TEMPLATES: list[dict[str, Any]] = [
    {"event": "media", "sequenceNumber": "5", "streamSid": "MZfuzz",
     "media": {"track": "inbound", "chunk": "3", "timestamp": "60", "payload": "/" * 212 + "8="}},
    {"event": "mark", "sequenceNumber": "6", "streamSid": "MZfuzz", "mark": {"name": "g1-u1-end"}},
    {"event": "dtmf", "sequenceNumber": "7", "streamSid": "MZfuzz", "dtmf": {"track": "inbound_track",
                                                                              "digit": "5"}},
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    {"event": "stop", "sequenceNumber": "8", "streamSid": "MZfuzz",
     "stop": {"accountSid": "AC1", "callSid": "CAfuzz"}},
]
twilio_messages = messages_from(TWILIO_TEMPLATES)
"""One message on an open stream after a valid ``start``."""


def start_template(call_sid: str, stream_sid: str, params: dict[str, str]) -> dict[str, Any]:
    return {"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
            "start": {"accountSid": "AC1", "streamSid": stream_sid, "callSid": call_sid,
                      "tracks": ["inbound"], "customParameters": params,
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def mutated_start(template: dict[str, Any]) -> st.SearchStrategy[str | bytes]:
    """A ``start`` built from a valid one (with its real token) with fields dropped or changed."""
    return st.one_of(mutated(template).map(dumps), messages_from([template]))


# ---- ConversationRelay agent -----------------------------------------------------------------------
AGENT_TEMPLATES: list[dict[str, Any]] = [
    {"type": "text", "token": "Hi.", "last": True, "interruptible": True, "preemptible": False},
    {"type": "text", "token": "Hel", "last": False},
    {"type": "play", "source": "http://10.0.0.1/a.wav", "loop": 1, "interruptible": True},
    {"type": "play", "source": "http://169.254.169.254/latest/meta-data", "loop": 2},
    {"type": "play", "source": "http://127.0.0.1:9/x.wav", "loop": 0},
    {"type": "sendDigits", "digits": "12w#"},
    {"type": "language", "ttsLanguage": "en-US", "transcriptionLanguage": "en-US"},
    {"type": "end", "handoffData": "{\"reason\": \"done\"}"},
]
agent_messages = messages_from(AGENT_TEMPLATES)
"""One message a hostile agent sends the bridge's relay client. Play sources are IP literals only
(refused or closed ports on loopback): a fuzz run must not resolve random names."""
