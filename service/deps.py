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

__all__ = ["SettingsDep", "ManagerDep", "CubesDep", "require_token", "token_refusal"]


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


def token_refusal(settings: ServiceSettings, given: str | None) -> ServiceError | None:
    """The 401 for a call carrying bearer token ``given`` (None: no token), or None when it may proceed.

    Parameters
    ----------
    settings : ServiceSettings
        Without a ``token`` every call may proceed.
    given : str or None
        The token the call carries (the part after ``Bearer``).
    """
    if settings.token is None:
        return None
    expected = settings.token.get_secret_value().encode()
    if secrets.compare_digest((given or "").encode(), expected):
        return None
    return ServiceError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)",
                        headers={"WWW-Authenticate": "Bearer", "Connection": "close"})


def require_token(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Refuse the call (401) unless it carries the configured bearer token (no-op without a token).

    The same check runs in :class:`~rtnstream.service.uploads.BodyGuard` before any byte of a body is read
    (FastAPI reads a JSON body before it solves dependencies); here it guards the route and documents the
    scheme in the OpenAPI. The refusal closes the connection: the rest of a body is never read.
    """
    refusal = token_refusal(settings, credentials.credentials if credentials is not None else None)
    if refusal is not None:
        raise refusal
