"""Who may open a media stream: stream tokens, the <Stream url>, and X-Twilio-Signature."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from telephony.twilio.signatures import sign, stream_url, validate_stream_handshake, validate_webhook
from telephony.twilio.tokens import StreamTokens, token_key

AUTH_TOKEN = "12345"
WEBHOOK_URL = "https://bridge.example.com/twiml"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "From": "+12349013030",
          "To": "+18005551212", "Digits": "1234"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # wall-clock seconds: tokens must agree across hosts

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


CALL = {"voice": "amy", "preset": "balanced", "greeting": "Hello!", "agentUrl": "wss://agent.example/a",
        "from": "+15550001111", "to": "+15550002222", "direction": "inbound"}


@pytest.fixture
def tokens(clock: FakeClock) -> StreamTokens:
    return StreamTokens(AUTH_TOKEN, ttl_s=60.0, clock=clock)


# ---- stream tokens -------------------------------------------------------------------------------
def test_default_ttl_is_a_minute():
    assert StreamTokens(AUTH_TOKEN).ttl_s == 60.0


def test_tokens_are_url_safe_and_unique(tokens):
    issued = {tokens.issue("CA1", CALL) for _ in range(100)}
    assert len(issued) == 100
    for token in issued:
        assert len(token) >= 32
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_a_token_redeems_once(tokens):
    token = tokens.issue("CA1", CALL)
    assert tokens.redeem(token, "CA1", CALL) is None
    assert tokens.redeem(token, "CA1", CALL) == "used"
    assert len(tokens) == 1  # remembered as used until it expires


@pytest.mark.parametrize("made_up", ["", "made-up", "v1.x.y.z", "v1.99999999999.n.m", "v2.1.a.b",
                                     "v1.9999999999.AAAA.\udcff", "v1.1.a.b.c"])
def test_malformed_or_forged_tokens_fail(tokens, made_up):
    assert tokens.redeem(made_up, "CA1", CALL) in ("malformed", "mismatch")


def test_token_expires_at_its_ttl(tokens, clock):
    token = tokens.issue("CA1", CALL)
    late = tokens.issue("CA2", CALL)
    clock.now += 59.0
    assert tokens.redeem(token, "CA1", CALL) is None
    clock.now += 1.5
    assert tokens.redeem(late, "CA2", CALL) == "expired"


@pytest.mark.parametrize("change", [*CALL, "added", "removed", "callSid", "unicode"])
def test_any_changed_parameter_voids_the_token_without_consuming_it(tokens, change):
    """A start that changes the agentUrl (or anything else the webhook answered) is refused, and a
    forged start must not burn the real call's token either."""
    token = tokens.issue("CA1", CALL)
    params, call_sid = dict(CALL), "CA1"
    if change == "added":
        params["partialPrompts"] = "true"
    elif change == "removed":
        del params["greeting"]
    elif change == "callSid":
        call_sid = "CA2"
    elif change == "unicode":
        params["greeting"] = "Hello!\udcff"  # a lone surrogate is refused, not an exception
    else:
        params[change] = params[change] + "x"
    assert tokens.redeem(token, call_sid, params) == "mismatch"
    assert tokens.redeem(token, "CA1", CALL) is None


def test_a_token_verifies_in_another_process_with_the_same_auth_token(clock):
    """No shared memory: a second instance (another process, another host) verifies what the
    first issued; a different auth token does not."""
    issuer = StreamTokens(AUTH_TOKEN, clock=clock)
    other_host = StreamTokens(AUTH_TOKEN, clock=clock)
    stranger = StreamTokens("54321", clock=clock)
    token = issuer.issue("CA1", CALL)
    assert stranger.redeem(token, "CA1", CALL) == "mismatch"
    assert other_host.redeem(token, "CA1", CALL) is None
    assert other_host.redeem(token, "CA1", CALL) == "used"


def test_the_key_is_derived_not_the_auth_token_itself():
    assert token_key(AUTH_TOKEN) == hmac.new(AUTH_TOKEN.encode(), b"voice-bridge stream token v1",
                                             hashlib.sha256).digest()


def test_without_an_auth_token_the_key_is_random_per_process(clock):
    a, b = StreamTokens(None, clock=clock), StreamTokens(None, clock=clock)
    assert b.redeem(a.issue("CA1", CALL), "CA1", CALL) == "mismatch"


def test_used_tokens_are_forgotten_when_they_expire(tokens, clock):
    for i in range(50):
        assert tokens.redeem(tokens.issue(f"CA{i}", CALL), f"CA{i}", CALL) is None
    assert len(tokens) == 50
    clock.now += 61.0
    assert tokens.redeem(tokens.issue("CAnew", CALL), "CAnew", CALL) is None
    assert len(tokens) == 1


def test_used_tokens_are_bounded_oldest_first(clock):
    tokens = StreamTokens(AUTH_TOKEN, ttl_s=60.0, max_used=3, clock=clock)
    for i in range(5):
        assert tokens.redeem(tokens.issue(f"CA{i}", CALL), f"CA{i}", CALL) is None
    assert len(tokens) == 3


def test_default_bound_is_large():
    assert StreamTokens(AUTH_TOKEN).max_used == 100_000


# ---- <Stream url> --------------------------------------------------------------------------------
@pytest.mark.parametrize(("public", "expected"), [
    ("https://bridge.example.com", "wss://bridge.example.com/media-stream"),
    ("https://bridge.example.com/", "wss://bridge.example.com/media-stream"),
    ("http://localhost:8080", "ws://localhost:8080/media-stream"),
    ("http://localhost:8080//", "ws://localhost:8080/media-stream"),
    ("https://example.com/voice/", "wss://example.com/voice/media-stream"),
    ("https://example.com/voice?x=1#frag", "wss://example.com/voice/media-stream"),
    ("https://example.com/?x=1", "wss://example.com/media-stream"),
    ("HTTPS://example.com", "wss://example.com/media-stream"),
    ("wss://example.com", "wss://example.com/media-stream"),
    ("  https://example.com  ", "wss://example.com/media-stream"),
])
def test_stream_url(public, expected):
    assert stream_url(public) == expected


@pytest.mark.parametrize("public", ["example.com", "ftp://example.com", "https://", "", "/media"])
def test_stream_url_refuses_what_is_not_a_public_url(public):
    with pytest.raises(ValueError):
        stream_url(public)


# ---- signatures ----------------------------------------------------------------------------------
def reference_signature(token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's documented scheme, independently: HMAC-SHA1 over URL + sorted key/value pairs."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def test_sign_follows_twilios_scheme():
    assert sign(AUTH_TOKEN, WEBHOOK_URL, PARAMS) == reference_signature(AUTH_TOKEN, WEBHOOK_URL, PARAMS)
    wss = "wss://h/media-stream"
    assert sign(AUTH_TOKEN, wss) == reference_signature(AUTH_TOKEN, wss, {})


def test_webhook_signature_round_trip():
    signature = sign(AUTH_TOKEN, WEBHOOK_URL, PARAMS)
    assert validate_webhook(AUTH_TOKEN, WEBHOOK_URL, PARAMS, signature)


@pytest.mark.parametrize("change", ["token", "url", "param", "extra_param", "signature"])
def test_webhook_signature_fails_when_anything_changes(change):
    token, url, params = AUTH_TOKEN, WEBHOOK_URL, dict(PARAMS)
    signature = sign(token, url, params)
    if change == "token":
        token = "54321"
    elif change == "url":
        url = "https://evil.example.com/twiml"
    elif change == "param":
        params["To"] = "+18005550000"
    elif change == "extra_param":
        params["Extra"] = "1"
    else:
        signature = signature[:-2] + ("A=" if not signature.endswith("A=") else "B=")
    assert not validate_webhook(token, url, params, signature)


@pytest.mark.parametrize("signature", ["", None])
def test_missing_signature_fails(signature):
    assert not validate_webhook(AUTH_TOKEN, WEBHOOK_URL, PARAMS, signature)
    assert not validate_stream_handshake(AUTH_TOKEN, "wss://h/media-stream", signature)


def test_empty_auth_token_never_validates():
    """With an empty key anybody could compute the HMAC: refuse rather than 'validate'."""
    forged = reference_signature("", WEBHOOK_URL, PARAMS)
    assert not validate_webhook("", WEBHOOK_URL, PARAMS, forged)
    with pytest.raises(ValueError):
        sign("", WEBHOOK_URL, PARAMS)


def test_stream_handshake_is_signed_over_the_wss_url_without_params():
    url = stream_url("https://bridge.example.com/")
    signature = sign(AUTH_TOKEN, url, {})
    assert validate_stream_handshake(AUTH_TOKEN, url, signature)
    # Signed over the https:// form or with params, it is not the handshake's signature.
    https_form = sign(AUTH_TOKEN, "https://bridge.example.com/media-stream")
    assert not validate_stream_handshake(AUTH_TOKEN, url, https_form)
    assert not validate_stream_handshake(AUTH_TOKEN, url, sign(AUTH_TOKEN, url, {"a": "b"}))
    assert not validate_stream_handshake("other-token", url, signature)


def test_sign_params_default_to_none():
    url = "wss://agent.example.com/relay"
    assert sign(AUTH_TOKEN, url) == sign(AUTH_TOKEN, url, {}) == sign(AUTH_TOKEN, url, None)
