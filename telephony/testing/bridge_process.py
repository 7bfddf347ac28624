"""A bridge (or a second, "remote" bridge) as a real process on loopback, for tests and benchmarks.

Used wherever a real server over real HTTP matters: the remote engine against a second bridge that
serves ``/v1/audio/speech``, a server killed mid-utterance, figures measured from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BridgeProcess:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """The OpenAI-compatible base URL (what VOICE_BRIDGE_ENGINE_URL takes)."""
        return f"{self.base_url}/v1"

    def kill(self) -> None:
        """SIGKILL: the process dies mid-whatever, as a crashed GPU server would."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.asynccontextmanager
async def bridge_process(*args: str, env: dict[str, str] | None = None, ready_timeout_s: float = 60.0,
                         cpu: int | None = None, port: int | None = None) -> AsyncIterator[BridgeProcess]:
    """``voice-bridge serve --port N *args`` on 127.0.0.1, waited for until /health answers.

    ``env`` is added to this process's environment. ``cpu`` pins the process to one core
    (benchmarks). ``port``: one picked beforehand (PUBLIC_URL must name it). The process is
    terminated (then killed) on exit, whatever happened.
    """
    port = port or free_port()
    log = tempfile.NamedTemporaryFile(prefix=f"voice-bridge-{port}-", suffix=".log", delete=False)
    command = [sys.executable, "-m", "telephony", "serve", "--host", "127.0.0.1", "--port", str(port),
               *args]
    if "--workers" not in args:
        command += ["--workers", "1"]  # one process unless a test asks (the default is one per core)
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    process = subprocess.Popen(  # noqa: ASYNC220 - a fork+exec, once per test, before any timing
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    running = BridgeProcess(port, process, Path(log.name))
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            async with asyncio.timeout(ready_timeout_s):
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"bridge process exited with {process.returncode}:\n"
                                           f"{running.log()[-2000:]}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{running.base_url}/health")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # stop at once (SIGTERM would drain live calls)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 5)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)
