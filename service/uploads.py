"""Request bodies: uploads streamed to disk under a size limit, and a guard in front of every other body.

:class:`BodyGuard` (ASGI middleware) checks the token of every mutating call before any byte of its body
is read, and holds the body of every call but the streamed uploads to ``max_body_bytes``. An upload route
then calls :func:`receive_upload`, which writes the file (a multipart ``file`` field or a raw FITS body) as
it arrives into a file the caller names, never holding it whole in memory or spooling it elsewhere. A body
over its limit is answered 413: before it is read when ``Content-Length`` says so, else (chunked) as soon
as the bytes received pass the limit.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import anyio
from fastapi.security.utils import get_authorization_scheme_param
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rtnstream.service.deps import token_refusal
from rtnstream.service.errors import ServiceError, error_response
from rtnstream.service.settings import ServiceSettings

__all__ = ["STREAMED_UPLOADS", "UPLOAD_FIELD", "UPLOAD_MEDIA_TYPES", "BodyGuard", "upload_openapi", "receive_upload"]

#: Name of the multipart form field that holds the file.
UPLOAD_FIELD = "file"
#: Content types of a raw (not multipart) FITS body.
UPLOAD_MEDIA_TYPES = ("application/fits", "image/fits", "application/octet-stream")

_WRITE_BATCH = 1 << 20  # bytes collected before one write to disk (in a worker thread)
_CLOSE = {"Connection": "close"}  # the rest of a refused body is not read: the connection cannot be reused
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]")

#: Routes that stream their body to disk under ``max_upload_bytes``; every other body: ``max_body_bytes``.
STREAMED_UPLOADS = frozenset({("POST", "/v1/cubes")})


def upload_openapi(description: str) -> dict:
    """The ``requestBody`` of an upload route for the OpenAPI schema (both accepted forms)."""
    binary = {"type": "string", "format": "binary", "description": description}
    form = {"type": "object", "required": [UPLOAD_FIELD], "properties": {UPLOAD_FIELD: binary}}
    content = {"multipart/form-data": {"schema": form}, **{t: {"schema": binary} for t in UPLOAD_MEDIA_TYPES}}
    return {"requestBody": {"required": True, "content": content}}


def _client_name(raw: bytes | str | None) -> str:
    """The file name the client gave (base name, safe characters, at most 100), or ``upload``."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    name = _NAME_CHARS.sub("_", os.path.basename((raw or "").replace("\\", "/")))[:100].strip("._")
    return name or "upload"


def _too_large(limit: int, setting: str) -> ServiceError:
    """The 413 for a body over ``limit`` bytes, the limit of ``setting`` (the upload's names its field)."""
    upload = setting == "max_upload_bytes"
    what = f"{UPLOAD_FIELD}: the upload" if upload else "the body"
    return ServiceError(413, "too_large", f"{what} exceeds the service's limit of {limit} bytes (setting "
                        f"{setting})", UPLOAD_FIELD if upload else None, headers=_CLOSE)


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyGuard:
    """ASGI middleware: the token of every mutating call before its body, and a size limit on bodies.

    Parameters
    ----------
    app : ASGI application
    settings : ServiceSettings
        ``token`` (none: no check) and ``max_body_bytes``.
    streamed : set of (method, path)
        Routes that stream their body under a limit of their own (:func:`receive_upload`): only the token
        is checked here.
    """

    def __init__(self, app: ASGIApp, settings: ServiceSettings, streamed: frozenset[tuple[str, str]]) -> None:
        self.app, self.settings, self.streamed = app, settings, streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, given = get_authorization_scheme_param(headers.get("authorization"))
        refusal = token_refusal(self.settings, given if scheme.lower() == "bearer" else None)
        if refusal is None and (scope["method"], scope["path"]) not in self.streamed:
            try:
                receive = await self._bounded(headers, receive)
            except ServiceError as exc:
                refusal = exc
            except ClientDisconnect:
                return  # nobody to answer
        if refusal is None:
            await self.app(scope, receive, send)
            return
        response = error_response(refusal.status, refusal.code, refusal.message, refusal.field, refusal.headers)
        await response(scope, receive, send)

    async def _bounded(self, headers: Headers, receive: Receive) -> Receive:
        """A replay of the body, read here whole: at most ``max_body_bytes``, each piece within
        ``body_idle_timeout_s`` (413 from ``Content-Length`` before reading, or once the body passes it)."""
        limit = self.settings.max_body_bytes
        _declared_length(headers, limit, "max_body_bytes")
        body = bytearray()
        async for chunk in _body_chunks(receive, self.settings.body_idle_timeout_s, None):
            body += chunk
            if len(body) > limit:
                raise _too_large(limit, "max_body_bytes")
        replay: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        return replayed


async def _body_chunks(receive: Receive, idle_s: float, field: str | None) -> AsyncIterator[bytes]:
    """The pieces of a request body as they arrive.

    Raises
    ------
    ServiceError
        408 when no piece comes within ``idle_s`` (a client trickling its body holds nothing for long).
    starlette.requests.ClientDisconnect
        The client went away.
    """
    more = True
    while more:
        message = None
        with anyio.move_on_after(idle_s):
            message = await receive()
        if message is None:
            what = f"{field}: the upload" if field else "the body"
            raise ServiceError(408, "body_timeout", f"{what} sent nothing for {idle_s:g} s (setting "
                               "body_idle_timeout_s)", field, headers=_CLOSE)
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        more = message.get("more_body", False)
        yield message.get("body", b"")


class _Sink:
    """Where the file's bytes go: batched, then written to ``out`` in a worker thread."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.buffer = bytearray()

    async def flush(self, force: bool = False) -> None:
        if self.buffer and (force or len(self.buffer) >= _WRITE_BATCH):
            data, self.buffer = bytes(self.buffer), bytearray()
            await run_in_threadpool(self.out.write, data)


class _FormFile:
    """Callbacks of the multipart parser: the data of the ``file`` part into the sink, other parts dropped."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.name: str | None = None  # client file name, once the file part began
        self.done = False  # the file part ended
        self._in_file = False
        self._header = [b"", b""]
        self._disposition = b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        if self._header[0].strip().lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._in_file = options.get(b"name") == UPLOAD_FIELD.encode()
        if self._in_file:
            if self.name is not None:
                raise ServiceError(422, "invalid_request", f"{UPLOAD_FIELD}: the form holds more than one "
                                   f"{UPLOAD_FIELD!r} field", UPLOAD_FIELD)
            self.name = _client_name(options.get(b"filename"))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.sink.buffer += data[start:end]

    def _part_end(self) -> None:
        if self._in_file:
            self.done, self._in_file = True, False


def _declared_length(headers: Headers, limit: int, setting: str) -> None:
    """Refuse (413) a body whose ``Content-Length`` already exceeds ``limit``, before reading any of it."""
    value = headers.get("content-length")
    if value is None:
        return
    if not value.strip().isdigit():
        raise ServiceError(400, "bad_request", f"Content-Length must be a byte count, got {value!r}",
                           headers=_CLOSE)
    if int(value) > limit:
        raise _too_large(limit, setting)


async def receive_upload(request: Request, target: Path, limit: int, idle_s: float) -> str:
    """Write the uploaded file of ``request`` to ``target`` as it arrives, at most ``limit`` body bytes.

    Parameters
    ----------
    request : starlette.requests.Request
        ``multipart/form-data`` with the file in field ``file``, or a raw body of one of
        :data:`UPLOAD_MEDIA_TYPES` (its name, if any, from ``Content-Disposition: ...; filename=``).
    target : pathlib.Path
        File to write (created or truncated). On any error it is removed.
    limit : int
        Largest body accepted, bytes (multipart overhead included).
    idle_s : float
        Longest wait for the next piece of the body, s.

    Returns
    -------
    str
        The client's name of the file (``upload`` when it gave none): the name error messages use.

    Raises
    ------
    ServiceError
        413 over ``limit``; 408 nothing received for ``idle_s``; 415 another content type; 400 a malformed
        multipart body or a client that went away; 422 no (or more than one) ``file`` field.
    """
    try:
        _declared_length(request.headers, limit, "max_upload_bytes")
        boundary = _boundary(request)
        with open(target, "wb") as out:
            return await _receive(request, _Sink(out), boundary, limit, idle_s)
    except MultipartParseError as exc:
        target.unlink(missing_ok=True)
        raise ServiceError(400, "bad_request", f"{UPLOAD_FIELD}: malformed multipart body ({exc})", UPLOAD_FIELD,
                           headers=_CLOSE) from None
    except ClientDisconnect:
        target.unlink(missing_ok=True)
        raise ServiceError(400, "incomplete_upload", f"{UPLOAD_FIELD}: the client went away before the upload "
                           "ended", UPLOAD_FIELD, headers=_CLOSE) from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _boundary(request: Request) -> bytes | None:
    """The multipart boundary, or None for a raw FITS body; 415 for another content type."""
    media, options = parse_options_header(request.headers.get("content-type", ""))
    media_type = media.decode("latin-1").lower()
    if media_type in UPLOAD_MEDIA_TYPES:
        return None
    if media_type != "multipart/form-data":
        raise ServiceError(415, "unsupported_media_type", f"{UPLOAD_FIELD}: send multipart/form-data with a "
                           f"{UPLOAD_FIELD!r} field, or the FITS bytes as {' or '.join(UPLOAD_MEDIA_TYPES)}; got "
                           f"{media_type or 'no Content-Type'}", UPLOAD_FIELD, headers=_CLOSE)
    if not options.get(b"boundary"):
        raise ServiceError(400, "bad_request", f"{UPLOAD_FIELD}: multipart body without a boundary", UPLOAD_FIELD,
                           headers=_CLOSE)
    return options[b"boundary"]


async def _receive(request: Request, sink: _Sink, boundary: bytes | None, limit: int, idle_s: float) -> str:
    """Stream the body into ``sink`` (the ``file`` part of a multipart body when ``boundary`` is given)."""
    form = parser = None
    if boundary is not None:
        form = _FormFile(sink)
        parser = MultipartParser(boundary, form.callbacks())
    received = 0
    async for chunk in _body_chunks(request.receive, idle_s, UPLOAD_FIELD):
        received += len(chunk)
        if received > limit:
            raise _too_large(limit, "max_upload_bytes")
        if parser is None:
            sink.buffer += chunk
        else:
            parser.write(chunk)
        await sink.flush()
    await sink.flush(force=True)
    if parser is None:
        _, disposition = parse_options_header(request.headers.get("content-disposition", ""))
        return _client_name(disposition.get(b"filename"))
    parser.finalize()
    if form.name is None or not form.done:
        raise ServiceError(422, "invalid_request", f"{UPLOAD_FIELD}: the form has no complete {UPLOAD_FIELD!r} "
                           "field (the RTN calibration file)", UPLOAD_FIELD)
    return form.name
