"""Who may open a media stream: stream tokens, the <Stream url>, and X-Twilio-Signature."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from telephony.stream_auth import (
    StreamTokens,
    sign,
    stream_url,
    validate_stream_handshake,
    validate_webhook,
)

AUTH_TOKEN = "12345"
WEBHOOK_URL = "https://bridge.example.com/twiml"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "From": "+12349013030",
          "To": "+18005551212", "Digits": "1234"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(clock: FakeClock) -> StreamTokens:
    return StreamTokens(ttl_s=60.0, clock=clock)


# ---- stream tokens -------------------------------------------------------------------------------
def test_default_ttl_is_a_minute():
    assert StreamTokens().ttl_s == 60.0


def test_tokens_are_url_safe_and_unguessable(tokens):
    issued = {tokens.issue("CA1") for _ in range(100)}
    assert len(issued) == 100
    for token in issued:
        assert len(token) >= 32
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_a_token_redeems_once(tokens):
    token = tokens.issue("CA1")
    assert tokens.redeem(token, "CA1")
    assert not tokens.redeem(token, "CA1")
    assert len(tokens) == 0


def test_unknown_token_fails(tokens):
    tokens.issue("CA1")
    assert not tokens.redeem("made-up", "CA1")
    assert not tokens.redeem("", "CA1")


def test_token_expires(tokens, clock):
    token = tokens.issue("CA1")
    clock.now += 59.9
    assert tokens.redeem(token, "CA1")
    late = tokens.issue("CA2")
    clock.now += 60.0
    assert not tokens.redeem(late, "CA2")
    assert len(tokens) == 0  # the expired token was dropped


def test_token_expires_exactly_at_its_ttl(tokens, clock):
    token = tokens.issue("CA1")
    clock.now += 60.0
    assert not tokens.redeem(token, "CA1")


def test_wrong_call_sid_fails_without_consuming_the_token(tokens):
    """A forged start naming another call must not burn the real call's token."""
    token = tokens.issue("CA1")
    assert not tokens.redeem(token, "CA2")
    assert not tokens.redeem(token, "CAé")  # non-ASCII input is refused, not an exception
    assert tokens.redeem(token, "CA1")


def test_tokens_are_bound_to_their_own_call(tokens):
    a, b = tokens.issue("CA1"), tokens.issue("CA2")
    assert not tokens.redeem(a, "CA2")
    assert tokens.redeem(b, "CA2")
    assert tokens.redeem(a, "CA1")


def test_issue_prunes_expired_tokens(tokens, clock):
    for i in range(50):
        tokens.issue(f"CA{i}")
    assert len(tokens) == 50
    clock.now += 61.0
    fresh = tokens.issue("CAnew")
    assert len(tokens) == 1
    assert tokens.redeem(fresh, "CAnew")


def test_outstanding_tokens_are_bounded_oldest_first(clock):
    tokens = StreamTokens(ttl_s=60.0, max_outstanding=3, clock=clock)
    issued = [tokens.issue(f"CA{i}") for i in range(5)]
    assert len(tokens) == 3
    assert not tokens.redeem(issued[0], "CA0")
    assert not tokens.redeem(issued[1], "CA1")
    assert all(tokens.redeem(issued[i], f"CA{i}") for i in (2, 3, 4))


def test_default_bound_is_large():
    assert StreamTokens().max_outstanding == 100_000


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
