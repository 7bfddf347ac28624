"""A call's events on their way to its agent: a bounded queue and the one task that delivers them.

Why a queue: the events come from the socket reader and the listener, which must never wait on
the agent (a slow reader makes Twilio drop caller audio). Why one task: an agent's hooks run one at
a time, in event order (the ``Agent`` contract). A full queue drops the event and counts it rather
than grow without bound behind an agent that stopped keeping up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from telephony.agents.base import Agent, AgentError, CallControl
from telephony.agents.events import AgentEvent, deliver

log = logging.getLogger("voice_bridge.call")

AGENT_EVENT_QUEUE = 256


class AgentInbox:
    """Owns the delivery task; ``aclose`` (or the call's shutdown) cancels it."""

    def __init__(self, agent: Agent, call: CallControl, *, on_error: Callable[[str], None],
                 on_agent_failed: Callable[[AgentError], None]) -> None:
        self._agent = agent
        self._call = call
        self._on_error = on_error
        """Counts an error by its metric label."""
        self._on_agent_failed = on_agent_failed
        """The agent raised AgentError: the call must end; nothing more is delivered."""
        self._queue: asyncio.Queue[AgentEvent] = asyncio.Queue(AGENT_EVENT_QUEUE)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._deliver_all(), name=f"agent:{self._call.info.call_sid}")

    def post(self, event: AgentEvent) -> None:
        """Queue ``event`` without waiting; dropped (and counted) when the agent is far behind."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._on_error("agent_event_overflow")
            log.warning("call %s: agent is not keeping up; %s dropped", self._call.info.call_sid,
                        type(event).__name__)

    async def _deliver_all(self) -> None:
        """Deliver events one at a time, in order, until the agent fails or the call ends."""
        while True:
            event = await self._queue.get()
            try:
                await deliver(self._agent, self._call, event)
            except AgentError as exc:
                log.warning("call %s: agent failed: %s", self._call.info.call_sid, exc)
                self._on_error("agent")
                self._on_agent_failed(exc)
                return
            except Exception:  # a bug in one hook: logged with its traceback, the call goes on
                log.exception("call %s: agent hook for %s raised", self._call.info.call_sid,
                              type(event).__name__)
                self._on_error("agent_hook")
