"""Serve any ASGI app on 127.0.0.1 inside the caller's event loop (the in-process bridge, and the
tests' stand-in servers)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from telephony.net import listen_socket
from tests.conftest import eventually


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, sock: socket.socket | None = None, *, force_exit: bool = True,
                     server: uvicorn.Server | None = None, **config: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on ``sock`` (default: a free loopback port); yields its base URL.

    ``force_exit`` stops without waiting for streams a test left hanging (stand-ins); the bridge
    itself is given its graceful shutdown. ``config`` goes to ``uvicorn.Config``, unless a ready
    ``server`` is given (the bridge's own, with its connection guard).
    """
    sock = sock or listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    if server is None:
        server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", "lifespan": "off", **config}))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or task.done(), what="the server started")
        if task.done():
            task.result()  # it failed to start: raise why
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = force_exit
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


def free_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
