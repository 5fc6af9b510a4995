"""Run the control plane with uvicorn: in the foreground (``rtnstream serve``) or in a background thread."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from rtnstream.service.app import create_app
from rtnstream.service.settings import ServiceSettings

__all__ = ["serve", "BackgroundServer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _config(settings: ServiceSettings, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level=log_level,
                          lifespan="on")


def serve(settings: ServiceSettings, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C stops the jobs after flushing them)."""
    uvicorn.Server(_config(settings, log_level)).run()


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

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
