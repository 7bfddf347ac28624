"""Stream authentication and call admission as typed results: ``Authenticated | Refused`` and
``Admitted | Refused``, each refusal carrying its close code from the error tree (tts_core/errors.py).

No server here: a scripted socket stands in for Twilio, so each rule is checked on its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from telephony.call_admission import BridgeAtCapacity, StreamAlreadyLive, UnsupportedMediaFormat, check_room
from telephony.twilio.authentication import (
    Authenticated,
    NoStartInTime,
    Refused,
    StreamAuthPolicy,
    StreamCredentialsRefused,
    authenticate,
    check_handshake,
)
from telephony.twilio.protocol import ProtocolError, Start, parse_inbound
from telephony.twilio.signatures import sign
from telephony.twilio.socket import StreamGone
from telephony.twilio.tokens import StreamTokens
from tts_core.errors import InvalidInput, Unauthorized

AUTH_TOKEN = "12345"
URL = "wss://bridge.example.com/media-stream"
CALL_SID = "CA1"
PARAMS = {"voice": "joe", "greeting": "hi"}


def start_text(params: Mapping[str, str], *, call_sid: str = CALL_SID, encoding: str = "audio/x-mulaw",
               stream_sid: str = "MZ1") -> str:
    return json.dumps({"event": "start", "streamSid": stream_sid, "start": {
        "streamSid": stream_sid, "callSid": call_sid, "accountSid": "AC1", "tracks": ["inbound"],
        "customParameters": dict(params),
        "mediaFormat": {"encoding": encoding, "sampleRate": 8000, "channels": 1}}})


class ScriptedSocket:
    """Hands out the scripted messages, then waits forever (Twilio saying nothing more)."""

    def __init__(self, *texts: str | None, signature: str | None = None) -> None:
        self._messages: list[dict[str, Any]] = [
            {"type": "websocket.disconnect"} if t is None else {"type": "websocket.receive", "text": t}
            for t in texts]
        self.headers = {} if signature is None else {"x-twilio-signature": signature}

    async def receive(self) -> dict[str, Any]:
        if not self._messages:
            await asyncio.Event().wait()
        return self._messages.pop(0)


def policy(*, auth_token: str | None = AUTH_TOKEN, require_signature: bool = False,
           start_timeout_s: float = 5.0) -> StreamAuthPolicy:
    return StreamAuthPolicy(auth_token=auth_token, stream_url=lambda: URL,
                            require_signature=require_signature, start_timeout_s=start_timeout_s)


async def run_auth(ws: ScriptedSocket, tokens: StreamTokens, pol: StreamAuthPolicy | None = None,
                   starts: list[Start] | None = None) -> Authenticated | Refused:
    seen = starts if starts is not None else []
    return await authenticate(ws, pol or policy(), tokens, on_start=seen.append)  # type: ignore[arg-type]


# ---- the handshake --------------------------------------------------------------------------------
def test_handshake_modes_follow_the_signature_and_the_settings() -> None:
    assert check_handshake(policy(auth_token=None), None) == "insecure-dev"
    assert check_handshake(policy(), None) == "token"
    assert check_handshake(policy(), sign(AUTH_TOKEN, URL)) == "signature+token"


@pytest.mark.parametrize(("pol", "signature", "metric"), [
    (policy(), "forged", "stream_signature"),
    (policy(), sign(AUTH_TOKEN, URL + "x"), "stream_signature"),  # signed over another URL
    (policy(require_signature=True), None, "stream_unsigned"),
])
def test_a_bad_or_missing_signature_is_refused_unauthorized_with_1008(
        pol: StreamAuthPolicy, signature: str | None, metric: str) -> None:
    refused = check_handshake(pol, signature)
    assert isinstance(refused, Refused)
    assert isinstance(refused.error, StreamCredentialsRefused)
    assert isinstance(refused.error, Unauthorized)
    assert refused.close_code == 1008 and refused.metric == metric


# ---- the start and its token ----------------------------------------------------------------------
async def test_a_valid_token_authenticates_and_returns_the_start_and_what_was_read() -> None:
    tokens = StreamTokens(AUTH_TOKEN)
    connected = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
    start = start_text({**PARAMS, "token": tokens.issue(CALL_SID, PARAMS)})
    starts: list[Start] = []
    auth = await run_auth(ScriptedSocket(connected, start), tokens, starts=starts)
    assert isinstance(auth, Authenticated)
    assert auth.start.call_sid == CALL_SID and auth.auth_mode == "token"
    assert auth.opening == [connected, start]
    assert starts == [auth.start]


@pytest.mark.parametrize("change", ["forged", "changed parameter", "other call", "missing"])
async def test_a_start_without_a_valid_token_is_refused_with_1008(change: str) -> None:
    tokens = StreamTokens(AUTH_TOKEN)
    token = tokens.issue(CALL_SID, PARAMS)
    params: dict[str, str] = {**PARAMS, "token": token}
    call_sid = CALL_SID
    if change == "forged":
        params["token"] = token[:-4] + "AAAA"
    elif change == "changed parameter":
        params["voice"] = "someone-else"
    elif change == "other call":
        call_sid = "CA2"
    else:
        del params["token"]
    starts: list[Start] = []
    auth = await run_auth(ScriptedSocket(start_text(params, call_sid=call_sid)), tokens, starts=starts)
    assert isinstance(auth, Refused)
    assert isinstance(auth.error, StreamCredentialsRefused)
    assert (auth.close_code, auth.metric) == (1008, "stream_token")
    assert starts, "the start is reported (drain, connection cap) before its token is checked"


async def test_a_token_opens_one_stream_only() -> None:
    tokens = StreamTokens(AUTH_TOKEN)
    start = start_text({**PARAMS, "token": tokens.issue(CALL_SID, PARAMS)})
    assert isinstance(await run_auth(ScriptedSocket(start), tokens), Authenticated)
    assert isinstance(await run_auth(ScriptedSocket(start), tokens), Refused)


async def test_without_an_auth_token_any_start_is_let_in() -> None:
    auth = await run_auth(ScriptedSocket(start_text(PARAMS)), StreamTokens(None), policy(auth_token=None))
    assert isinstance(auth, Authenticated) and auth.auth_mode == "insecure-dev"


async def test_no_start_in_time_is_refused_with_1008() -> None:
    auth = await run_auth(ScriptedSocket(), StreamTokens(AUTH_TOKEN), policy(start_timeout_s=0.01))
    assert isinstance(auth, Refused) and isinstance(auth.error, NoStartInTime)
    assert (auth.close_code, auth.metric) == (1008, "start_timeout")


@pytest.mark.parametrize(("first", "violation"), [
    ('{"event":"media","streamSid":"MZ1","media":{"payload":"AAAA"}}', "unexpected_before_start"),
    ("not json", "malformed_json"),
])
async def test_anything_but_connected_before_start_is_a_protocol_refusal(first: str, violation: str) -> None:
    auth = await run_auth(ScriptedSocket(first), StreamTokens(AUTH_TOKEN))
    assert isinstance(auth, Refused) and isinstance(auth.error, InvalidInput)
    assert (auth.close_code, auth.metric) == (1008, f"protocol_{violation}")
    assert auth.reason == f"protocol error before start: {violation}"


async def test_twilio_leaving_before_start_is_refused_without_counting_an_error() -> None:
    auth = await run_auth(ScriptedSocket(None), StreamTokens(AUTH_TOKEN))
    assert isinstance(auth, Refused) and isinstance(auth.error, StreamGone)
    assert auth.metric is None


def test_protocol_errors_are_invalid_input_closing_with_1008() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_inbound('{"event":"nope"}')
    assert isinstance(info.value, InvalidInput) and info.value.ws_close_code == 1008
    assert info.value.violation == "unknown_event"


# ---- admission ------------------------------------------------------------------------------------
def bridge_with(*live: Start, max_calls: int = 10) -> Any:
    calls = {s.stream_sid: SimpleNamespace(info=SimpleNamespace(call_sid=s.call_sid)) for s in live}
    return SimpleNamespace(calls=calls, settings=SimpleNamespace(max_calls=max_calls))


def a_start(*, call_sid: str = CALL_SID, stream_sid: str = "MZ1", encoding: str = "audio/x-mulaw") -> Start:
    parsed = parse_inbound(start_text(PARAMS, call_sid=call_sid, stream_sid=stream_sid, encoding=encoding))
    assert isinstance(parsed, Start)
    return parsed


def test_a_new_call_with_room_is_let_in() -> None:
    assert check_room(a_start(), bridge_with(a_start(call_sid="CA9", stream_sid="MZ9"))) is None


@pytest.mark.parametrize(("start", "bridge", "error", "code", "metric"), [
    (a_start(encoding="audio/l16"), bridge_with(), UnsupportedMediaFormat, 1003, "media_format"),
    (a_start(call_sid="CA2"), bridge_with(a_start()), StreamAlreadyLive, 1008, "duplicate_stream"),
    (a_start(stream_sid="MZ2"), bridge_with(a_start()), StreamAlreadyLive, 1008, "duplicate_call"),
    (a_start(), bridge_with(a_start(call_sid="CA9", stream_sid="MZ9"), max_calls=1), BridgeAtCapacity,
     1013, "capacity"),
])
def test_admission_refusals_carry_their_close_code(start: Start, bridge: Any, error: type, code: int,
                                                   metric: str) -> None:
    refused = check_room(start, bridge)
    assert isinstance(refused, Refused) and isinstance(refused.error, error)
    assert (refused.close_code, refused.metric) == (code, metric)



# ---- the handler's catch-all ----------------------------------------------------------------------
class ClosableSocket:
    def __init__(self) -> None:
        from starlette.websockets import WebSocketState

        self.app = SimpleNamespace(state=SimpleNamespace())
        self.application_state = WebSocketState.CONNECTED
        self.client_state = WebSocketState.CONNECTED
        self.closed: list[tuple[int, str | None]] = []

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed.append((code, reason))


async def test_a_bug_in_the_handler_is_logged_with_its_traceback_and_closes_1011(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from telephony import media_stream

    async def buggy(ws: object, started: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(media_stream, "_authenticate_admit_run", buggy)
    ws = ClosableSocket()
    await media_stream.handle_stream(ws)  # type: ignore[arg-type]
    assert ws.closed == [(1011, "internal error")]
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is KeyError]
    assert logged, "the bug must be logged with its traceback, not hidden"
