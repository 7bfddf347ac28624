"""The bridge's uvicorn server: bounded connections (telephony/conn_guard.py) and a graceful drain
on SIGTERM (telephony/drain.py).

uvicorn's own signal handling closes every connection at once (live calls got 1012 within 70 ms)
and then re-raises the signal, so the process never exits 0. ``BridgeServer`` installs its own
handlers instead: the first SIGTERM drains; a second SIGTERM, or SIGINT (Ctrl-C) at any time,
stops at once the way uvicorn does; a third signal skips even the app's cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Generator
from typing import Any

import uvicorn
from fastapi import FastAPI

from telephony.config import Settings
from telephony.conn_guard import ConnectionGuard, FdBudget, guarded_protocol
from telephony.drain import drain
from telephony.workers import notify_ready

log = logging.getLogger(__name__)

KEEP_ALIVE_S = 5
"""An idle kept-alive connection is closed after this (uvicorn's timeout_keep_alive)."""
MAX_HEADER_BYTES = 16 * 1024
"""Request line plus headers (h11's max incomplete event size); past it: 400 and closed."""
FORCED_SHUTDOWN_S = 5
"""On an immediate stop, connections get this long to close before their tasks are cancelled."""
SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


class BridgeServer(uvicorn.Server):
    """uvicorn's Server with the drain. ``handle_signals=False`` (tests in-process) leaves the
    process's signal handlers alone; ``begin_drain`` is what SIGTERM calls."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings, *,
                 handle_signals: bool = True) -> None:
        super().__init__(config)
        self.app = app
        self.settings = settings
        self.handle_signals = handle_signals
        self.drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publisher: asyncio.Task[None] | None = None
        """Under --workers: publishes remote fleets' state for /metrics (telephony/metrics.py)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Our handlers for SIGTERM and SIGINT, restored afterwards; unlike uvicorn's, a signal
        is not raised again at the end, so a drained process exits 0."""
        self._loop = asyncio.get_running_loop()
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self._signal) for sig in SIGNAL_NAMES}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _signal(self, sig: int, _frame: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.on_signal, sig)

    def on_signal(self, sig: int) -> None:
        name = SIGNAL_NAMES.get(sig, str(sig))
        bridge = getattr(self.app.state, "bridge", None)
        if sig == signal.SIGTERM and self.drain_task is None and not self.should_exit \
                and self.started and bridge is not None:
            log.warning("%s: graceful drain (a second SIGTERM or a SIGINT stops at once)", name)
            self.begin_drain()
            return
        if self.should_exit:
            log.warning("%s again: exiting without cleanup", name)
            self.force_exit = True
            return
        live = len(bridge.calls) if bridge is not None else 0
        log.warning("%s: stopping now; %d live call(s) are cut", name, live)
        if self.drain_task is not None:
            self.drain_task.cancel()
        self.should_exit = True

    def begin_drain(self) -> None:
        async def run() -> None:
            try:
                await drain(self.app.state.bridge, self.settings.drain_s)
            finally:
                self.should_exit = True

        self.drain_task = asyncio.get_running_loop().create_task(run(), name="drain")

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            bridge = getattr(self.app.state, "bridge", None)
            if bridge is not None and bridge.metrics.multiprocess_dir is not None:
                self._publisher = asyncio.get_running_loop().create_task(
                    bridge.metrics.publish_forever(), name="fleet-metrics")
            notify_ready()  # under --workers: the supervisor counts this worker as serving

    async def shutdown(self, sockets: Any = None) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        if self.drain_task is not None and not self.drain_task.done():
            self.drain_task.cancel()
            await asyncio.gather(self.drain_task, return_exceptions=True)
        await super().shutdown(sockets=sockets)


def build_server(app: FastAPI, settings: Settings, budget: FdBudget, *, log_level: str,
                 handle_signals: bool = True) -> BridgeServer:
    """The configured server for ``app``; ``app.state.connection_guard`` holds the caps."""
    guard = ConnectionGuard(max_connections=budget.max_connections, max_pending=budget.max_pending,
                            max_pending_per_peer=budget.max_pending_per_peer,
                            header_timeout_s=settings.header_timeout_s,
                            body_timeout_s=settings.body_timeout_s)
    app.state.connection_guard = guard
    config = uvicorn.Config(
        app, log_level=log_level, ws="websockets-sansio", ws_per_message_deflate=False,
        ws_max_size=1 << 20, http=guarded_protocol(guard), timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=FORCED_SHUTDOWN_S, lifespan="on",
    )
    return BridgeServer(config, app, settings, handle_signals=handle_signals)
