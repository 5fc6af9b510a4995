"""One JSON error envelope for every HTTP error: ``{"error": {"code", "message", "field"?}}``.

Messages never show this server's folders: the data and presets folders, the temporary folder and the home
folder are replaced by ``<data_dir>``, ``<presets_dir>``, ``<tmp>`` and ``~``.
"""

from __future__ import annotations

import logging
import tempfile
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rtnstream.kernels.exceptions import CubeFormatError
from rtnstream.service.models import ErrorDetail, ErrorEnvelope

__all__ = ["ServiceError", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)

_LOCATION_ROOTS = ("body", "query", "path", "header", "cookie")


class ServiceError(Exception):
    """An error answered with the envelope.

    Parameters
    ----------
    status : int
        HTTP status.
    code : str
        Machine-readable code (``not_found``, ``unauthorized``, ...).
    message : str
    field : str, optional
        The request field at fault.
    headers : dict, optional
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The envelope as a response."""
    body = ErrorEnvelope(error=ErrorDetail(code=code, message=message, field=field))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _server_paths(request: Request) -> list[tuple[str, str]]:
    """(path, what to say instead) for the folders of this server, longest first."""
    settings = getattr(request.app.state, "settings", None)
    folders = [(tempfile.gettempdir(), "<tmp>"), (str(Path.home()), "~")]
    if settings is not None:
        folders += [(str(settings.data_dir), "<data_dir>"), (str(settings.presets_dir), "<presets_dir>")]
    pairs = {(p, label) for path, label in folders for p in {path, str(Path(path).resolve())} if len(p) > 1}
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def _scrub(request: Request, message: str) -> str:
    """``message`` without the paths of this server's folders (a client learns nothing of its layout)."""
    for path, label in _server_paths(request):
        message = message.replace(path, label)
    return message


def _field_name(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in _LOCATION_ROOTS)]
    return ".".join(parts) if parts else (str(loc[0]) if loc else None)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc.status, exc.code, _scrub(request, exc.message), exc.field, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _field_name(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid value")
    if field:
        message = f"{field}: {message}"
    if len(errors) > 1:
        others = sorted({f for e in errors[1:] if (f := _field_name(tuple(e.get("loc", ())))) and f != field})
        if others:
            message += f" (also invalid: {', '.join(others)})"
    return error_response(422, "invalid_request", _scrub(request, message), field)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    return error_response(exc.status_code, code, _scrub(request, str(exc.detail)),
                          headers=getattr(exc, "headers", None))


async def _cube_error(request: Request, exc: CubeFormatError) -> JSONResponse:
    return error_response(422, "invalid_cube", _scrub(request, str(exc)), "file")


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the service log")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with the envelope."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(CubeFormatError, _cube_error)
    app.add_exception_handler(Exception, _unexpected_error)
