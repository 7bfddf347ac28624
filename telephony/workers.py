"""``voice-bridge serve --workers N``: N bridge processes on one port, supervised by a small parent.

Why processes: one bridge process uses one core (the event loop), and the frame path is CPU bound.
Each worker is the ordinary single-process bridge (its own engine slots, caches, calls; nothing
shared but configuration): a webhook answered by one worker and its stream opened on another work
because the stream token is a stateless HMAC (telephony/twilio/tokens.py).

How:
- the parent binds every listening socket once (the HTTP port, and the lean stream listener's port
  when one is configured) and starts N children (``python -m telephony serve ...``, a fresh
  interpreter each: no fork after threads) that inherit them (``VB_WORKER_SOCKETS``); the kernel
  spreads new connections over the processes accepting on the shared socket;
- a child says it is ready over a pipe (``VB_WORKER_READY_FD``) once its app is up; a child that
  dies before the first start completed fails the whole start (exit 1), one that dies later is
  restarted with backoff;
- SIGTERM is forwarded to every child, each drains as telephony/drain.py says, and the parent
  exits 0 when all have exited 0; SIGINT (or a second SIGTERM) is forwarded as well and stops them
  at once. Children run in their own process group, so a terminal's Ctrl-C reaches them once,
  through the parent; they get SIGTERM if the parent dies (``PR_SET_PDEATHSIG``);
- the lean stream listener (telephony/twilio/picows_socket.py, ``VOICE_BRIDGE_STREAM_PORT``) takes its
  socket from ``listen_socket("stream", host, port)`` like the HTTP listener does: the inherited
  one in a worker, a new one otherwise;
- ``/metrics`` adds up across workers through prometheus-client's multiprocess mode: the parent
  creates ``PROMETHEUS_MULTIPROC_DIR`` (a temporary directory), marks dead children's live gauges
  dead and removes the directory at exit (telephony/metrics.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from telephony import net

log = logging.getLogger("voice_bridge.workers")

ENV_INDEX = "VB_WORKER_INDEX"
ENV_COUNT = "VB_WORKER_COUNT"
ENV_SOCKETS = "VB_WORKER_SOCKETS"
"""``role=fd,...``: listening sockets inherited from the parent (roles: ``http``, ``stream``)."""
ENV_READY_FD = "VB_WORKER_READY_FD"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Delay before restarting a worker that died, growing with its consecutive quick deaths."""
STABLE_S = 60.0
"""A worker that lived this long resets its backoff."""
STOP_TIMEOUT_S = 10.0
"""After a forwarded SIGINT, children that are still running then are killed."""


@dataclass(frozen=True)
class WorkerIdentity:
    """Which process this is: ``index`` of ``count`` (0 of 1 without ``--workers``)."""

    index: int
    count: int
    pid: int

    def as_dict(self) -> dict[str, int]:
        return {"pid": self.pid, "worker": self.index, "workers": self.count}


def identity() -> WorkerIdentity:
    return WorkerIdentity(int(os.environ.get(ENV_INDEX, "0")), int(os.environ.get(ENV_COUNT, "1")),
                          os.getpid())


def default_workers(insecure_dev: bool, engine: str = "piper") -> int:
    """One per core this process may run on (``taskset``/cpuset respected), or 1 for local
    development (``--insecure-dev``) and for the in-process GPU engine (``chatterbox``: each worker
    would load its own copy of the model onto the GPU)."""
    if insecure_dev or engine == "chatterbox":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def _inherited() -> dict[str, int]:
    fds: dict[str, int] = {}
    for item in filter(None, os.environ.get(ENV_SOCKETS, "").split(",")):
        role, _, fd = item.partition("=")
        fds[role] = int(fd)
    return fds


def listen_socket(role: str, host: str, port: int) -> socket.socket:
    """The listening socket for ``role`` (``http`` or ``stream``): the one inherited from the
    supervisor when this is a worker, else a new one bound to ``host:port`` (telephony/net.py)."""
    fd = _inherited().get(role)
    if fd is not None:
        return socket.socket(fileno=fd)
    return net.listen_socket(host, port)


def notify_ready() -> None:
    """Tell the supervisor this worker serves (no-op outside ``--workers``)."""
    fd = os.environ.pop(ENV_READY_FD, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), b"r")
        os.close(int(fd))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM (a drain) when the supervisor dies, so no orphan keeps
    the port. Linux only; elsewhere a no-op."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready: bool = False
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Starts ``count`` workers running ``command`` on the inherited ``sockets``, keeps them up,
    forwards signals, and returns the exit status (see the module docstring)."""

    def __init__(self, command: Sequence[str], count: int, sockets: dict[str, socket.socket], *,
                 env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.count = count
        self.sockets = sockets
        self.env = dict(os.environ if env is None else env)
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping: str | None = None
        """``"drain"`` after SIGTERM, ``"now"`` after SIGINT or a second SIGTERM."""
        self.failed_start = False
        self.multiproc_dir = tempfile.mkdtemp(prefix="voice-bridge-metrics-")
        self._stop_deadline: float | None = None
        self._all_ready_once = False

    # ---- children --------------------------------------------------------------------------------
    def _spawn(self, worker: _Worker) -> None:
        read_fd, write_fd = os.pipe()
        fds = {role: s.fileno() for role, s in self.sockets.items()}
        env = {**self.env, ENV_INDEX: str(worker.index), ENV_COUNT: str(self.count),
               ENV_SOCKETS: ",".join(f"{r}={fd}" for r, fd in fds.items()),
               ENV_READY_FD: str(write_fd), MULTIPROC_ENV: self.multiproc_dir}
        try:
            worker.process = subprocess.Popen(
                self.command, env=env, pass_fds=(*fds.values(), write_fd), process_group=0,
                preexec_fn=_die_with_parent)
        finally:
            os.close(write_fd)
        worker.ready_fd, worker.ready, worker.started_at = read_fd, False, time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _close_ready(self, worker: _Worker) -> None:
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _on_ready_readable(self, worker: _Worker) -> None:
        assert worker.ready_fd is not None
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(worker.ready_fd, 1)
        self._close_ready(worker)
        if data and worker.process is not None:
            worker.ready = True
            log.info("worker %d ready (pid %d)", worker.index, worker.process.pid)
            if all(w.ready for w in self.workers):
                log.warning("voice-bridge: %d workers serving", self.count)

    def _reap(self) -> None:
        for worker in self.workers:
            process = worker.process
            if process is None or process.poll() is None:
                continue
            code = process.returncode
            worker.exit_codes.append(code)
            worker.process = None
            if worker.ready_fd is not None:  # died before saying ready
                self._on_ready_readable(worker)
            self._mark_dead(process.pid)
            lived = time.monotonic() - worker.started_at
            if self.stopping is not None:
                log.info("worker %d (pid %d) exited with %d", worker.index, process.pid, code)
                continue
            if not worker.ready and not self._started_once():
                log.error("worker %d (pid %d) exited with %d before the bridge started; stopping",
                          worker.index, process.pid, code)
                self.failed_start = True
                self._forward(signal.SIGINT, "now")
                continue
            worker.quick_deaths = 0 if lived >= STABLE_S else worker.quick_deaths + 1
            delay = RESTART_BACKOFF_S[min(worker.quick_deaths, len(RESTART_BACKOFF_S) - 1)]
            worker.restart_at = time.monotonic() + delay
            log.error("worker %d (pid %d) exited with %d after %.1f s; restarting in %.1f s",
                      worker.index, process.pid, code, lived, delay)

    def _started_once(self) -> bool:
        return self._all_ready_once or all(w.ready for w in self.workers)

    def _mark_dead(self, pid: int) -> None:
        """Drop a dead worker's live gauges (active calls, workers up) from the sums."""
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.multiproc_dir)

    # ---- signals ---------------------------------------------------------------------------------
    def _on_signal(self, sig: int, _frame: object) -> None:
        if sig == signal.SIGTERM and self.stopping is None:
            log.warning("SIGTERM: every worker drains (a second SIGTERM or a SIGINT stops at once)")
            self._forward(signal.SIGTERM, "drain")
        elif sig in (signal.SIGTERM, signal.SIGINT):
            log.warning("%s: stopping every worker now", signal.Signals(sig).name)
            self._forward(sig, "now")

    def _forward(self, sig: int, mode: str) -> None:
        self.stopping = mode
        if mode == "now":
            self._stop_deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self.workers:
            worker.restart_at = None
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select
        try:
            for worker in self.workers:
                self._spawn(worker)
            while True:
                self._reap()
                if all(w.ready for w in self.workers):
                    self._all_ready_once = True
                alive = [w for w in self.workers if w.process is not None]
                if self.stopping is not None and not alive:
                    break
                now = time.monotonic()
                if self.stopping is None:
                    for worker in self.workers:
                        if worker.process is None and worker.restart_at is not None \
                                and worker.restart_at <= now:
                            self._spawn(worker)
                if self._stop_deadline is not None and now >= self._stop_deadline:
                    for worker in alive:
                        log.error("worker %d did not stop; killing it", worker.index)
                        with contextlib.suppress(ProcessLookupError):
                            worker.process.kill()  # type: ignore[union-attr]
                    self._stop_deadline = None
                waits = [w.restart_at for w in self.workers if w.restart_at is not None]
                if self._stop_deadline is not None:
                    waits.append(self._stop_deadline)
                timeout = max(0.0, min(waits) - time.monotonic()) if waits else None
                readable = [wake_r] + [w.ready_fd for w in self.workers if w.ready_fd is not None]
                ready, _, _ = select.select(readable, [], [], timeout)
                if wake_r in ready:
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        os.read(wake_r, 512)
                for worker in self.workers:
                    if worker.ready_fd is not None and worker.ready_fd in ready:
                        self._on_ready_readable(worker)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            for worker in self.workers:
                self._close_ready(worker)
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait(5)
            shutil.rmtree(self.multiproc_dir, ignore_errors=True)
        if self.failed_start:
            return 1
        codes = [w.exit_codes[-1] for w in self.workers if w.exit_codes]
        if any(codes):
            log.error("worker exit codes: %s", codes)
            return 1
        log.warning("every worker has exited; supervisor done")
        return 0


def run_workers(argv: Sequence[str], count: int, sockets: dict[str, socket.socket],
                overrides: dict[str, str]) -> int:
    """Run ``voice-bridge <argv>`` in ``count`` workers (``--workers 1`` each, plus ``overrides``
    as flags, e.g. the port actually bound)."""
    command = [sys.executable, "-m", "telephony", *argv, "--workers", "1"]
    for flag, value in overrides.items():
        command += [flag, value]
    for sock in sockets.values():
        sock.set_inheritable(True)
    return Supervisor(command, count, sockets).run()
