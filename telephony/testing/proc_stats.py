"""CPU of the bridge under load, from Linux /proc: its process (or a ``--workers`` supervisor and
its workers, found by the port they listen on) and their utime + stime."""

from __future__ import annotations

import contextlib
import os

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (Linux /proc), None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def pid_listening_on(port: int) -> int | None:
    """The pid of the (same-user) process with a listening TCP socket on ``port``, if any."""
    pids = pids_listening_on(port)
    return pids[0] if pids else None


def pids_listening_on(port: int) -> list[int]:
    """Every (same-user) process holding a listening TCP socket on ``port``: one bridge, or a
    ``--workers`` supervisor and its workers (they share the socket)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as handle:
            for line in list(handle)[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                        pids.append(int(entry))
                        break
    return sorted(pids)


def read_cpu_total(pids: list[int]) -> float | None:
    """utime + stime summed over ``pids`` (None if one is unreadable)."""
    values = [read_cpu_s(pid) for pid in pids]
    return None if not values or any(v is None for v in values) else sum(values)  # type: ignore[misc]
