"""Test helpers for Redis processes: find a service's embedded redis-server, pause it, wait for a pid to end."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.service._support import wait_for


def redis_pids_in(directory: Path) -> list[int]:
    """Pids of the redis-server processes working in ``directory`` (an embedded server works in the folder
    of its database file, ``data_dir``), from /proc."""
    directory = Path(directory).resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if ((entry / "comm").read_text().strip().startswith("redis-server")
                    and Path(os.readlink(entry / "cwd")) == directory and not _zombie(entry)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def embedded_redis_pid(data_dir: Path) -> int:
    """The pid of the one redis-server serving the service on ``data_dir``."""
    pids = redis_pids_in(data_dir)
    assert len(pids) == 1, f"expected one redis-server working in {data_dir}, found {pids}"
    return pids[0]


def _zombie(entry: Path) -> bool:
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    entry = Path(f"/proc/{pid}")
    try:
        return entry.exists() and not _zombie(entry)
    except OSError:
        return False


def kill_and_wait(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, f"process {pid} gone")


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """``pid`` stopped (SIGSTOP: a hung server that still holds its socket) for the block, then resumed."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
