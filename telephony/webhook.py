"""``POST /twiml``: Twilio's voice webhook. Answers ``<Connect><Stream>`` at once and primes the voice.

The answer never waits for the engine (Twilio gives a webhook 15 s, but every ms here is ms of
ringing): warmup, voice preload and the greeting's rendering start in the background, so the
greeting is ready, or nearly, when the media stream opens. Refusals are raised as errors of the tree
(telephony/errors.py) and answered by the app's handler.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from twilio.twiml.voice_response import Connect, VoiceResponse

from telephony.access import MAX_FORM_BYTES, form_params, read_body
from telephony.agents import per_call_agent_allowed
from telephony.errors import AccessDenied, BadRequest, Unavailable, UnprocessableRequest
from telephony.services import Bridge
from telephony.twilio.signatures import stream_url, validate_webhook
from telephony.untrusted import strip_xml_unsafe, xml_unsafe
from tts_core.voices import VOICE_ID_PATTERN

log = logging.getLogger(__name__)
router = APIRouter()

MAX_GREETING_CHARS = 500
STREAM_PARAMETERS = ("voice", "preset", "greeting", "agentUrl", "partialPrompts")


def public_request_url(bridge: Bridge, request: Request) -> str:
    """The URL Twilio signed: the configured public base plus our path and query, never the Host
    header we received (a proxy may have rewritten it)."""
    if bridge.settings.public_url is None:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{bridge.settings.public_url}{request.url.path}{query}"


@router.post("/twiml")
async def twiml(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    started = time.perf_counter()
    if bridge.drain.draining:  # Twilio then uses the number's fallback URL
        bridge.metrics.error("webhook_draining")
        raise Unavailable("this server is shutting down; retry on another", code="draining",
                          headers={"Retry-After": "1"})
    # capped before it is read: a webhook form is a few hundred bytes (telephony/access.py)
    params = form_params(await read_body(request, MAX_FORM_BYTES, bridge.settings.body_timeout_s))
    token = bridge.settings.twilio_auth_token
    if token:
        signature = request.headers.get("x-twilio-signature", "")
        if not validate_webhook(token, public_request_url(bridge, request), params, signature):
            bridge.metrics.error("webhook_signature")
            raise AccessDenied("X-Twilio-Signature does not match this request (check PUBLIC_URL)",
                               code="invalid_signature")
    query = request.query_params
    call_sid = params.get("CallSid") or query.get("CallSid")
    if not call_sid:
        raise BadRequest("CallSid form field is required", code="missing_call_sid")
    voice = query.get("voice") or bridge.default_voice
    greeting = query.get("greeting", bridge.settings.default_greeting)
    agent = query.get("agentUrl") or bridge.settings.default_agent
    if not VOICE_ID_PATTERN.fullmatch(voice):
        raise UnprocessableRequest("voice must match ^[A-Za-z0-9_-]{1,64}$", code="invalid_voice")
    preset = bridge.presets.get(query.get("preset") or bridge.settings.default_preset)  # 422 unknown_preset
    if len(greeting) > MAX_GREETING_CHARS:
        raise UnprocessableRequest(f"greeting exceeds {MAX_GREETING_CHARS} characters",
                                   code="greeting_too_long")
    partial_prompts = query.get("partialPrompts", "false").strip().lower()
    if partial_prompts not in {"true", "false"}:
        raise UnprocessableRequest("partialPrompts must be true or false", code="invalid_partial_prompts")
    if xml_unsafe(greeting) or xml_unsafe(agent):  # TwiML (XML 1.0) cannot carry them at all
        field, code = ("greeting", "invalid_greeting") if xml_unsafe(greeting) else (
            "agentUrl", "invalid_agent")
        raise UnprocessableRequest(f"{field} contains control characters XML cannot carry (only tab, "
                                   "newline and carriage return are allowed)", code=code)
    if not per_call_agent_allowed(agent, bridge.settings.default_agent,
                                  llm_configured=bridge.settings.llm_url is not None):
        raise UnprocessableRequest("agentUrl must be a ws:// or wss:// URL or 'demo'", code="invalid_agent")
    if agent != bridge.settings.default_agent and bridge.egress.literal_refused(agent):
        raise UnprocessableRequest("agentUrl names an address that is not allowed (loopback, private, "
                                   "link-local, metadata; see VOICE_BRIDGE_AGENT_ALLOW_NETS)",
                                   code="agent_refused")
    if not bridge.voice_may_exist(voice):
        raise UnprocessableRequest(f"no voice {voice!r} (not built in, not in the voices directory, "
                                   "and no voice server is configured)", code="unknown_voice")

    # Prime in the background: voice load + engine warm path + greeting render, all shared.
    if greeting:
        bridge.prerender(voice, preset, greeting)  # loads the voice and runs the whole audio path
    else:
        bridge.prime(voice, preset)

    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url(bridge.settings.stream_public_base()))
    parameters = {"voice": voice, "preset": preset.name, "greeting": greeting, "agentUrl": agent,
                  "partialPrompts": partial_prompts,
                  "from": strip_xml_unsafe(params.get("From", "")),
                  "to": strip_xml_unsafe(params.get("To", "")),
                  "direction": strip_xml_unsafe(params.get("Direction", "inbound"))}
    # the token covers the CallSid and every parameter above: a stream may change none of them
    parameters["token"] = bridge.tokens.issue(call_sid, parameters)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    bridge.drain.stream_expected(call_sid)
    bridge.metrics.webhook_seconds.observe(time.perf_counter() - started)
    return Response(content=str(response), media_type="application/xml")


__all__ = ["STREAM_PARAMETERS", "router"]
