"""Idle TCP connections cannot stall the control plane (issue 10 risk: 1100 idle connections exhausted the
file descriptors and stalled ``/healthz``). ``rtnstream serve`` runs in a child process whose open-file
limit the test sets; every connection is on loopback, bounded in number, and closed by the test."""

import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from rtnstream.service.server import free_port, raise_open_file_limit
from tests.service._support import wait_for

SERVER_FILES = 256  # the child's soft open-file limit when it starts


def _healthz(url: str, timeout_s: float) -> int | None:
    try:
        return httpx.get(f"{url}/healthz", timeout=timeout_s).status_code
    except httpx.HTTPError:
        return None


@contextmanager
def _serve(tmp_path, hard_limit: int, header_timeout_s: float) -> Iterator[str]:
    """``rtnstream serve`` with RLIMIT_NOFILE (SERVER_FILES, ``hard_limit``); yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RTNSTREAM_HEADER_TIMEOUT_S": str(header_timeout_s), "RTNSTREAM_LUT_ALPHAS": "[]"}

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_FILES, hard_limit))

    proc = subprocess.Popen([sys.executable, "-m", "rtnstream", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path), "--backend", "numpy", "--log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, preexec_fn=limit_files)
    try:
        wait_for(lambda: _healthz(url, 1.0) == 200, 60, "service process up")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _idle(stack: ExitStack, url: str, n: int, first_bytes: bytes = b"") -> list[socket.socket]:
    """``n`` connections to ``url`` that send ``first_bytes`` (maybe nothing) and then nothing more."""
    port = int(url.rsplit(":", 1)[1])
    out = []
    for _ in range(n):
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30))
        if first_bytes:
            s.sendall(first_bytes)
        out.append(s)
    return out


@pytest.fixture(autouse=True)
def _room_for_the_clients():
    raise_open_file_limit()  # the test process holds hundreds of sockets too


def test_idle_connections_beyond_the_soft_file_limit_leave_healthz_answering(tmp_path):
    # 400 idle connections against a service started with a soft limit of 256 files (hard 4096): serving
    # raises the soft limit to the hard one, so /healthz answers while they are all open. The head timeout
    # is set far beyond the wait, so only the raised limit can let it through (on main: no answer).
    with _serve(tmp_path, hard_limit=4096, header_timeout_s=300) as url, ExitStack() as stack:
        _idle(stack, url, 400)
        assert _healthz(url, 10.0) == 200


def test_connections_without_a_request_head_are_closed_after_the_header_timeout(tmp_path):
    # The hard limit is the soft one (no raise possible): 300 connections that send nothing or half a
    # request head take every descriptor; each is closed after header_timeout_s, and /healthz is answered.
    with _serve(tmp_path, hard_limit=SERVER_FILES, header_timeout_s=1.0) as url, ExitStack() as stack:
        silent = _idle(stack, url, 150)
        partial = _idle(stack, url, 150, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
        status = None
        for _ in range(6):  # bounded: a few header timeouts' worth of waves
            status = _healthz(url, 10.0)
            if status == 200:
                break
        assert status == 200
        for s in silent[:20] + partial[:20]:  # the first ones were accepted first: closed by the server
            assert s.recv(1024) == b""
