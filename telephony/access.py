"""Who may make the bridge do work, and how much of a request body it will read to find out.

Operator endpoints (``/warmup``, ``/preload``, ``/voices``) run syntheses, remote fetches and disk
writes, so they answer only to:

- the operator API key (``Authorization: Bearer <VOICE_BRIDGE_API_KEY>``, the same key as ``/v1``),
  checked in constant time and before the body is read; or
- a valid ``X-Twilio-Signature`` (Twilio's webhooks may call them): over PUBLIC_URL + path + query
  and the form parameters, or, for a JSON body, over the URL carrying ``bodySHA256`` (the body's
  SHA-256), as Twilio signs JSON. A signed URL without ``bodySHA256`` does not cover a JSON body,
  so it is refused (anyone could replay it with another body).

Anything else is 401 (no or wrong key) or 403 (a signature that does not match) before any work.
With neither a Twilio auth token nor a key (``--insecure-dev``) they stay open, as ``/v1`` does.

Bodies are read by ``read_body``: refused (413) by ``Content-Length`` before a byte is read, and
as soon as a chunked body passes the cap; refused (408, and closed) if they trickle past the
timeout. Of a body refused early, the server reads at most ``LINGER_BYTES`` more before closing
(telephony/conn_guard.py), so a 200 MB body is never read either.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs, parse_qsl, urlsplit

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect
from twilio.request_validator import RequestValidator

from telephony.errors import AccessDenied, AuthRequired, BadRequest, RequestTimeout, RequestTooLarge
from telephony.twilio.signatures import validate_webhook

MAX_FORM_BYTES = 64 * 1024
"""Twilio's webhook forms are a few hundred bytes; operator JSON bodies a few KiB."""
CLOSE = {"Connection": "close"}


def bearer_matches(headers: Mapping[str, str], key: str) -> bool:
    """True if ``Authorization: Bearer <key>`` carries exactly ``key``.

    ``compare_digest``: the time taken does not reveal how much of a guessed key was right.
    """
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) exceeds ``limit``, and
    with 408 if it does not arrive within ``timeout_s`` (a trickling client holds a connection)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_large(limit)
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout_s:g} s",
                             headers=CLOSE) from None
    except ClientDisconnect:  # gone mid-body (or cut by the protocol's deadline): no one to answer
        raise BadRequest("the connection closed before the body was in", code="client_disconnected",
                         headers=CLOSE) from None
    return bytes(body)


def too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"request body is larger than {limit} bytes")


def form_params(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as Twilio signs it (last value of a repeated
    name wins, as in Starlette's form); bytes that are not UTF-8 become U+FFFD, never an error."""
    return dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="utf-8",
                          errors="replace"))


def is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == \
        "application/x-www-form-urlencoded"


def twilio_signature_valid(auth_token: str, url: str, request: Request, body: bytes) -> bool:
    """Twilio's rules: form bodies are signed as parameters, anything else through ``bodySHA256``
    in the URL (an empty body: the URL alone)."""
    signature = request.headers.get("x-twilio-signature")
    if not body or is_form(request):
        return validate_webhook(auth_token, url, form_params(body) if body else {}, signature)
    if "bodySHA256" not in parse_qs(urlsplit(url).query):
        return False  # a signature over the URL alone does not cover this body
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not auth_token or not signature:
        return False
    return RequestValidator(auth_token).validate(url, text, signature)


async def operator_body(request: Request, *, auth_token: str | None, api_key: str | None,
                        insecure_dev: bool, public_url: str, body_timeout_s: float,
                        limit: int = MAX_FORM_BYTES) -> bytes:
    """Authorize an operator request, then return its (capped) body; raises a ``Refusal``
    (telephony/errors.py): ``AuthRequired``, ``AccessDenied`` or one of ``read_body``'s.

    The key is checked before the body is read; a signature needs the body, which is read only
    up to ``limit``. No credential at all is refused without reading anything.
    """
    if api_key and bearer_matches(request.headers, api_key):
        return await read_body(request, limit, body_timeout_s)
    signed = "x-twilio-signature" in request.headers
    if auth_token and signed:
        body = await read_body(request, limit, body_timeout_s)
        if twilio_signature_valid(auth_token, public_url, request, body):
            return body
        raise AccessDenied("X-Twilio-Signature does not match this request (check PUBLIC_URL; JSON "
                           "bodies are signed with bodySHA256)", code="invalid_signature")
    if not api_key and not auth_token and insecure_dev:
        return await read_body(request, limit, body_timeout_s)  # --insecure-dev: open, as /v1
    if "authorization" in request.headers:
        message = "incorrect API key: send 'Authorization: Bearer <VOICE_BRIDGE_API_KEY>'"
    elif api_key:
        message = ("operator endpoint: send 'Authorization: Bearer <VOICE_BRIDGE_API_KEY>' or a "
                   "valid X-Twilio-Signature")
    else:
        message = ("operator endpoint: set VOICE_BRIDGE_API_KEY on the server and send "
                   "'Authorization: Bearer <key>', or sign the request as Twilio does")
    raise AuthRequired(message, headers={"WWW-Authenticate": 'Bearer realm="voice-bridge"'})
