"""Whether an authenticated stream may become a call here, and what it will run with.

Runs after telephony/twilio/authentication.py, before any engine work: the media format, a stream
or call that is already live, capacity, then the call's preset, voice and agent (each named by a
``<Parameter>`` of the signed webhook, or the server's defaults). Returns ``Admitted`` or a
``Refused`` whose error carries the close code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from telephony.agents import make_agent, per_call_agent_allowed
from telephony.agents.base import Agent, AgentError
from telephony.services import Bridge
from telephony.twilio.authentication import Authenticated, Refused
from telephony.twilio.protocol import Start
from tts_core.errors import InvalidInput, Overloaded, VoiceBridgeError
from tts_core.presets import Preset, PresetError
from tts_core.voices import Voice


class UnsupportedMediaFormat(InvalidInput):
    """The stream's audio is not the phone line's μ-law 8 kHz mono: closed as unsupported data."""

    kind = "unsupported_media_format"
    ws_close_code = 1003


class StreamAlreadyLive(InvalidInput):
    """The start's streamSid or CallSid belongs to a call already running in this process."""

    kind = "stream_already_live"


class BridgeAtCapacity(Overloaded):
    """``max_calls`` calls are live: Twilio should try again later (or elsewhere)."""

    kind = "bridge_at_capacity"


class CallSetupFailed(InvalidInput):
    """The preset, voice or agent the call asked for cannot be had."""

    kind = "call_setup_failed"


@dataclass(frozen=True)
class Admitted:
    """What the call runs with, resolved before it starts."""

    preset: Preset
    voice_id: str
    voice: Voice | None
    agent: Agent
    voice_load_ms: float


def check_room(start: Start, bridge: Bridge) -> Refused | None:
    """Refuse an unsupported format, a duplicate stream or call, or a full bridge."""
    if not start.is_supported_format():
        return Refused(UnsupportedMediaFormat("only audio/x-mulaw 8000 Hz mono is supported"),
                       "media_format", f"{start.stream_sid}: unsupported media format {start.media_format}")
    if start.stream_sid in bridge.calls:
        return Refused(StreamAlreadyLive("streamSid already in use"), "duplicate_stream",
                       f"{start.stream_sid}: that streamSid is already live")
    if any(call.info.call_sid == start.call_sid for call in bridge.calls.values()):
        return Refused(StreamAlreadyLive("call already live"), "duplicate_call",
                       f"{start.stream_sid}: call {start.call_sid} is already live")
    if len(bridge.calls) >= bridge.settings.max_calls:
        return Refused(BridgeAtCapacity("bridge at capacity"), "capacity")
    return None


async def set_up(start: Start, bridge: Bridge) -> Admitted:
    """The call's preset, voice and agent; raises what the lookups raise."""
    settings = bridge.settings
    params = start.custom_parameters
    voice_started = time.perf_counter()
    preset = bridge.presets.get(params.get("preset") or settings.default_preset)
    voice_id, voice = await bridge.resolve_voice(params.get("voice"))
    voice_load_ms = (time.perf_counter() - voice_started) * 1000
    agent_spec = params.get("agentUrl") or settings.default_agent
    if not per_call_agent_allowed(agent_spec, settings.default_agent,
                                  llm_configured=settings.llm_url is not None):
        raise CallSetupFailed("agentUrl must be a ws:// or wss:// URL or 'demo'")
    return Admitted(preset, voice_id, voice, make_agent(agent_spec, bridge), voice_load_ms)


async def admit(auth: Authenticated, bridge: Bridge) -> Admitted | Refused:
    """``Admitted`` when the call may run here, else the refusal (nothing was started)."""
    refused = check_room(auth.start, bridge)
    if refused is not None:
        return refused
    try:
        return await set_up(auth.start, bridge)
    except (VoiceBridgeError, PresetError, LookupError, ValueError, RuntimeError, AgentError) as exc:
        # Every one of these names what the start asked for (a preset, voice or agent that cannot
        # be had): a refusal of this call (1008), not a server error. Anything else is a bug.
        message = exc.message if isinstance(exc, VoiceBridgeError) else str(exc)
        return Refused(CallSetupFailed(f"call setup failed: {message}"), "call_setup",
                       f"{auth.start.stream_sid}: {message}")
