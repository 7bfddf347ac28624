"""Agents decide what the bridge says: the demo, in-process Python agents, or remote ones over
the ConversationRelay protocol. ``make_agent`` picks one from an agent spec string."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from telephony.agents.base import (
    Agent,
    AgentError,
    CallControl,
    CallInfo,
    EndResult,
    SpeechOutcome,
    SpeechResult,
)

if TYPE_CHECKING:
    from telephony.services import Bridge


def per_call_agent_allowed(spec: str, configured: str, *, llm_configured: bool = False) -> bool:
    """Which agent a call's ``agentUrl`` may pick: the demo, a ConversationRelay URL, the
    configured default, or ``openai-chat`` when the operator configured an LLM server (the request
    picks the agent, never the server it talks to). A ``python:`` factory is code the server
    imports and runs, so only the operator's own configuration may name one, never a request."""
    return (spec == "demo" or (spec.startswith(("ws://", "wss://")) and _has_host(spec))
            or spec == configured or (spec == "openai-chat" and llm_configured))


def _has_host(url: str) -> bool:
    """``ws://`` or ``ws://:80/x`` names no host: invalid, not "this machine"."""
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:
        return False


def make_agent(spec: str, bridge: Bridge) -> Agent:
    """``demo``, ``openai-chat`` (the built-in LLM agent), ``ws(s)://host/path``
    (ConversationRelay agent) or ``python:module:attr``.

    For ``python:``, ``attr`` is an Agent subclass or a zero-argument factory returning an Agent;
    one instance is made per call.
    """
    if spec == "demo":
        from telephony.agents.demo import DemoAgent

        return DemoAgent()
    if spec == "openai-chat":
        return _openai_chat_agent(bridge)
    if spec.startswith(("ws://", "wss://")):
        from telephony.agents.relay_client import RelayAgent

        return RelayAgent(spec, auth_token=bridge.settings.twilio_auth_token, http_client=bridge.play_http,
                          egress=bridge.egress,
                          play_budget_bytes=int(bridge.settings.play_max_decoded_mb * 1024 * 1024),
                          end_hangs_up=bridge.settings.end_hangs_up)
    if spec.startswith("python:"):
        module_name, _, attr = spec[len("python:"):].partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise AgentError(f"cannot load agent {spec!r}: {exc}") from None
        agent = factory()
        if not isinstance(agent, Agent):
            raise AgentError(f"{spec!r} did not produce an Agent")
        return agent
    raise AgentError(f"unknown agent {spec!r}")


def _openai_chat_agent(bridge: Bridge) -> Agent:
    from telephony.agents.chat_stream import ChatServer
    from telephony.agents.openai_chat import OpenAIChatAgent

    settings = bridge.settings
    if not settings.llm_url:
        raise AgentError("agent 'openai-chat' needs VOICE_BRIDGE_LLM_URL")
    server = ChatServer(
        base_url=settings.llm_url, model=settings.llm_model, api_key=settings.llm_api_key,
        max_tokens=settings.llm_max_tokens, first_token_timeout_s=settings.llm_first_token_timeout_s,
        stall_timeout_s=settings.llm_stall_timeout_s,
    )
    return OpenAIChatAgent(server, http=bridge.http, system_prompt=settings.llm_system_prompt,
                           max_history=settings.llm_max_history, on_error=bridge.metrics.error)


__all__ = ["Agent", "AgentError", "CallControl", "CallInfo", "EndResult", "SpeechOutcome", "SpeechResult",
           "make_agent", "per_call_agent_allowed"]
