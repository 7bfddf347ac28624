"""Agents decide what the bridge says: the demo, in-process Python agents, or remote ones over
the ConversationRelay protocol. ``make_agent`` picks one from an agent spec string."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from telephony.agents.base import Agent, AgentError, CallControl, CallInfo, SpeechOutcome, SpeechResult

if TYPE_CHECKING:
    from telephony.services import Bridge


def per_call_agent_allowed(spec: str, configured: str) -> bool:
    """Which agent a call's ``agentUrl`` may pick: the demo, a ConversationRelay URL, or the
    configured default. A ``python:`` factory is code the server imports and runs, so only the
    operator's own configuration may name one, never a request."""
    return spec == "demo" or spec.startswith(("ws://", "wss://")) or spec == configured


def make_agent(spec: str, bridge: Bridge) -> Agent:
    """``demo``, ``ws(s)://host/path`` (ConversationRelay agent) or ``python:module:attr``.

    For ``python:``, ``attr`` is an Agent subclass or a zero-argument factory returning an Agent;
    one instance is made per call.
    """
    if spec == "demo":
        from telephony.agents.demo import DemoAgent

        return DemoAgent()
    if spec.startswith(("ws://", "wss://")):
        from telephony.agents.relay_client import RelayAgent

        return RelayAgent(spec, auth_token=bridge.settings.twilio_auth_token, http_client=bridge.http)
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


__all__ = ["Agent", "AgentError", "CallControl", "CallInfo", "SpeechOutcome", "SpeechResult",
           "make_agent", "per_call_agent_allowed"]
