"""Serve any ASGI app on 127.0.0.1 inside the test's event loop (stand-in servers for tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from telephony.net import listen_socket


@contextlib.asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yields its base URL (http://127.0.0.1:N)."""
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        assert server.started, "stand-in server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True  # do not wait for streams a test left hanging
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        sock.close()


def free_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
