"""Stream tokens: the short-lived credential the signed webhook issues and every stream's ``start`` presents.

Why our own token: Twilio signs the stream handshake over the fixed stream URL only (the same for
every call, so a captured handshake can be replayed); the token binds a stream to the CallSid and to
every parameter the webhook answered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

TOKEN_KEY_LABEL = b"voice-bridge stream token v1"
"""Derives the token key from the auth token: the auth token itself never signs our tokens, so a
token can never be mistaken for (or turned into) a Twilio signature, and vice versa."""
TOKEN_VERSION = "v1"


def token_key(auth_token: str) -> bytes:
    """HMAC-SHA256(auth token, label): the same key in every process that has the auth token."""
    return hmac.new(auth_token.encode(), TOKEN_KEY_LABEL, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _canonical(call_sid: str, params: Mapping[str, str], expires: int, nonce: str) -> bytes:
    """What the MAC covers, one unambiguous encoding: sorted JSON, ASCII only (a lone surrogate or
    any other odd character is escaped, never an encoding error)."""
    return json.dumps({"v": TOKEN_VERSION, "callSid": call_sid, "exp": expires, "nonce": nonce,
                       "params": dict(params)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class StreamTokens:
    """Stateless stream credentials: the signed webhook issues, any process with the auth token
    verifies.

    A token is ``v1.<expiry>.<nonce>.<mac>``: ``mac`` is HMAC-SHA256, keyed by ``token_key(auth
    token)``, over the CallSid, every ``<Parameter>`` the webhook put in the TwiML (voice, preset,
    greeting, agentUrl, from, to, direction, ...; everything but the token itself), the expiry
    (Unix seconds, wall clock, so other hosts agree) and the nonce. So:

    - it verifies in any process on any host that has the auth token: no shared memory;
    - a ``start`` whose CallSid, or any parameter, differs from what the webhook answered (a changed
      agentUrl, an added or removed parameter) does not verify, and is not consumed by trying;
    - single use is per process: a redeemed token's nonce is remembered until the token expires
      (at most ``max_used`` of them, oldest first out), and the media stream also refuses a CallSid
      or streamSid already live. Another process has not seen the redemption: see README, "Stream
      credentials", for that residual risk.

    Without an auth token (--insecure-dev) the key is random per process; nothing requires tokens.
    """

    def __init__(self, auth_token: str | None = None, ttl_s: float = 60.0, *, max_used: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.max_used = max_used
        self._key = token_key(auth_token) if auth_token else secrets.token_bytes(32)
        self._clock = clock
        self._used: OrderedDict[str, float] = OrderedDict()

    def issue(self, call_sid: str, params: Mapping[str, str]) -> str:
        expires = math.ceil(self._clock() + self.ttl_s)
        nonce = _b64(secrets.token_bytes(12))
        return f"{TOKEN_VERSION}.{expires}.{nonce}.{self._mac(call_sid, params, expires, nonce)}"

    def check(self, token: str, call_sid: str, params: Mapping[str, str]) -> str | None:
        """None if ``token`` is valid for this call and these parameters (not consuming it), else
        why not: ``malformed``, ``mismatch`` (forged, or a CallSid or parameter changed),
        ``expired`` or ``used``."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != TOKEN_VERSION or not parts[1].isdigit() or len(parts[1]) > 12:
            return "malformed"
        expires, nonce, mac = int(parts[1]), parts[2], parts[3]
        expected = self._mac(call_sid, params, expires, nonce)
        # bytes: compare_digest refuses non-ASCII str, and the token comes from an untrusted start
        if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
            return "mismatch"
        if self._clock() >= expires:
            return "expired"
        if nonce in self._used:
            return "used"
        return None

    def redeem(self, token: str, call_sid: str, params: Mapping[str, str]) -> str | None:
        """``check``, then remember the token as used (in this process) if it was valid."""
        self._prune()
        problem = self.check(token, call_sid, params)
        if problem is None:
            self._used[token.split(".")[2]] = float(token.split(".")[1])
            while len(self._used) > self.max_used:
                self._used.popitem(last=False)
        return problem

    def __len__(self) -> int:
        """Used tokens remembered (not yet expired)."""
        return len(self._used)

    def _mac(self, call_sid: str, params: Mapping[str, str], expires: int, nonce: str) -> str:
        message = _canonical(call_sid, params, expires, nonce)
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def _prune(self) -> None:
        now = self._clock()
        while self._used:
            nonce, expires = next(iter(self._used.items()))
            if expires > now:
                break
            del self._used[nonce]
