"""Run the control plane with uvicorn: in the foreground (``rtnstream serve``) or in a background thread.

The app (:func:`~rtnstream.service.app.create_app`, behind its body guard) is served by uvicorn. Around
uvicorn, for as long as it serves: the soft
limit of open files raised to the hard limit (idle connections cannot take the last descriptors),
connections that send no complete request head within ``header_timeout_s`` closed, the threshold tables
of ``lut_alphas`` built in the background, and freed heap memory handed back every ``memory_trim_s``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from rtnstream.kernels.lut import get_table
from rtnstream.service.app import create_app
from rtnstream.service.memory import HeapTrimmer, can_trim_heap
from rtnstream.service.settings import ServiceSettings

__all__ = ["serve", "BackgroundServer", "free_port", "raise_open_file_limit"]

log = logging.getLogger(__name__)


_GIVEN_PORTS: set[tuple[str, int]] = set()  # the ports free_port has handed out in this process


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago, and not one this function gave before (the system
    may offer a just-released port again: two endpoints asked for in turn would then be one)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if (host, port) not in _GIVEN_PORTS:
            _GIVEN_PORTS.add((host, port))
            return port


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files (``RLIMIT_NOFILE``) to its hard limit.

    Returns
    -------
    int
        The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a hard limit above the kernel's nr_open (macOS: OPEN_MAX)
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


class _HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus: a connection waiting for a request head closes after ``head_timeout_s``
    (uvicorn closes a keep-alive connection only after a response, never one that has sent nothing)."""

    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # a request head begun but not complete: its clock runs on
            self._arm_head_timer()
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def _config(settings: ServiceSettings, log_level: str) -> uvicorn.Config:
    protocol = type("HeadTimeoutProtocol", (_HeadTimeoutProtocol,), {"head_timeout_s": settings.header_timeout_s})
    return uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level=log_level,
                          lifespan="on", http=protocol, timeout_keep_alive=settings.keep_alive_timeout_s)


def _build_tables(alphas: list[float]) -> None:
    for alpha in alphas:
        get_table(alpha)


class _Extras:
    """What runs beside uvicorn: the open-file limit, the table builds, the heap trimmer."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        trim = settings.memory_trim_s > 0 and can_trim_heap()
        self._trimmer = HeapTrimmer(settings.memory_trim_s) if trim else None

    def start(self) -> None:
        log.info("open-file limit: %d", raise_open_file_limit())
        threading.Thread(target=_build_tables, args=(list(self.settings.lut_alphas),), name="rtn-lut-build",
                         daemon=True).start()
        if self._trimmer is not None:
            self._trimmer.start()

    def stop(self) -> None:
        if self._trimmer is not None:
            self._trimmer.stop()


def serve(settings: ServiceSettings, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C stops the jobs after flushing them)."""
    extras = _Extras(settings)
    extras.start()
    try:
        uvicorn.Server(_config(settings, log_level)).run()
    finally:
        extras.stop()


class BackgroundServer:
    """A real uvicorn server in a thread of this process (the demo and the tests use it).

    Parameters
    ----------
    settings : ServiceSettings
        ``port`` 0 picks a free port.
    log_level : str

    Examples
    --------
    >>> with BackgroundServer(settings) as server:  # doctest: +SKIP
    ...     httpx.get(server.url + "/healthz")
    """

    def __init__(self, settings: ServiceSettings, log_level: str = "warning") -> None:
        if settings.port == 0:
            settings = settings.model_copy(update={"port": free_port(settings.host)})
        self.settings = settings
        self.server = uvicorn.Server(_config(settings, log_level))
        self._extras = _Extras(settings)
        self._thread = threading.Thread(target=self.server.run, name="rtn-http", daemon=True)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        """Start and wait until the server accepts requests.

        Raises
        ------
        RuntimeError
            The server did not start within ``timeout_s`` (its log says why).
        """
        self._extras.start()
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the rtnstream server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Shut down (running jobs are stopped and flushed by the app's lifespan)."""
        self.server.should_exit = True
        self._thread.join(timeout_s)
        self._extras.stop()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
