"""``rtnstream serve``: run the live correction service (HTTP control plane, job pipelines)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtnstream.service.settings import ServiceSettings

__all__ = ["configure", "settings_from_args", "run"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream serve`` (an option wins over the ``RTNSTREAM_*`` environment, which wins
    over the ``--config`` file, which wins over the built-in defaults)."""
    parser.add_argument("--config", type=Path, metavar="TOML", dest="config_file",
                        help="settings file, e.g. config/service.toml (default: RTNSTREAM_CONFIG_FILE, else "
                             "none); options and the environment override it")
    parser.add_argument("--host", help="HTTP address (default 127.0.0.1; 0.0.0.0 for every interface, which "
                                       "needs --token or RTNSTREAM_ALLOW_INSECURE_BIND=1)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8080)")
    parser.add_argument("--redis-url", help="Redis for job state, e.g. redis://host:6379/0 "
                                            "(default: REDIS_URL, else an embedded server)")
    parser.add_argument("--token", help="bearer token required on mutating calls")
    parser.add_argument("--data-dir", type=Path, help="cubes, bias offset maps, embedded Redis database")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"),
                        help="default backend of new jobs (default auto)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="uvicorn log level")


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    """The service settings: the options given, over the environment, over ``--config``, over the defaults.

    Raises
    ------
    SystemExit
        A setting is invalid, or the configuration file cannot be read (the message names which).
    """
    from pydantic import ValidationError  # the service extra
    from pydantic_settings import SettingsError

    from rtnstream.service.settings import ServiceSettings

    overrides = {k: v for k in ("config_file", "host", "port", "redis_url", "token", "data_dir", "backend")
                 if (v := getattr(args, k)) is not None}
    try:
        return ServiceSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])  # none for a rule across settings
        message = first["msg"].removeprefix("Value error, ")
        raise SystemExit(f"rtnstream serve: error: {f'{field}: ' if field else ''}{message}") from None
    except SettingsError as exc:
        raise SystemExit(f"rtnstream serve: error: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (Ctrl-C); returns 0."""
    settings = settings_from_args(args)
    from rtnstream.service.server import serve  # FastAPI and uvicorn load only when the command runs
    from rtnstream.service.settings import is_loopback_host

    where = f"http://{settings.host}:{settings.port}"
    if settings.token is not None:
        log.info("HTTP on %s: a bearer token is required on every mutating call", where)
    elif not is_loopback_host(settings.host):  # allowed by allow_insecure_bind only
        log.warning("HTTP on %s WITHOUT a token (allow_insecure_bind): anyone who reaches this port can "
                    "create and stop jobs", where)
    else:
        log.info("HTTP on %s (loopback only, no token)", where)
    try:
        serve(settings, log_level=args.log_level)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down (jobs stopped and flushed); re-raised by asyncio
        log.info("stopped")
    return 0
