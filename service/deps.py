"""Route handler dependencies: what ``lifespan`` keeps on ``app.state``, and the token check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rtnstream.service.cubes import CubeStore
from rtnstream.service.errors import ServiceError
from rtnstream.service.jobs import JobManager
from rtnstream.service.settings import ServiceSettings

__all__ = ["SettingsDep", "ManagerDep", "CubesDep", "require_token"]


def _settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def _manager(request: Request) -> JobManager:
    return request.app.state.manager


def _cubes(request: Request) -> CubeStore:
    return request.app.state.cubes


SettingsDep = Annotated[ServiceSettings, Depends(_settings)]
ManagerDep = Annotated[JobManager, Depends(_manager)]
CubesDep = Annotated[CubeStore, Depends(_cubes)]

_bearer = HTTPBearer(auto_error=False, description="required on mutating calls when the service has a token")


def require_token(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Refuse the call (401) unless it carries the configured bearer token (no-op without a token).

    It runs before the body is read (no route it guards reads its body in a dependency); the refusal closes
    the connection, so the rest of a body the client is still sending is never read.
    """
    if settings.token is None:
        return
    expected = settings.token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, expected):
        raise ServiceError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)",
                           headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
