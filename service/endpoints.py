"""ZeroMQ endpoints a job may bind, checked before any socket is made (docs/protocol.md, Sockets).

libzmq unlinks whatever file sits at an ``ipc://`` path before it binds there, and binds ``tcp://`` ports
modulo 65536: so every endpoint is parsed and checked here first. :func:`parse_endpoint` checks the form
(the request models use it: 422); :func:`check_bindable` checks what the file system and this host say
(the pipeline calls it before it makes a socket).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from rtnstream.kernels.exceptions import RTNStreamError

__all__ = ["MAX_IPC_PATH_BYTES", "Endpoint", "EndpointError", "parse_endpoint", "check_bindable"]

#: ``sun_path`` holds 108 bytes with its terminating NUL.
MAX_IPC_PATH_BYTES = 107
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_INPROC = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class EndpointError(RTNStreamError, OSError):
    """An endpoint that cannot be bound; ``field`` is 'ingest', 'publish' or 'push'.

    Attributes
    ----------
    field : str
    conflict : bool
        True when the endpoint is valid but taken (in use, or an existing file): HTTP 409; False when it is
        not allowed at all: HTTP 422.
    """

    def __init__(self, field: str, endpoint: str, reason: str, conflict: bool = True) -> None:
        super().__init__(f"{field} endpoint {endpoint[:300]!r} cannot be bound: {reason}")
        self.field = field
        self.conflict = conflict


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint: ``scheme`` in {'tcp', 'ipc', 'inproc'} and the address after ``://``."""

    scheme: str
    address: str


def parse_endpoint(endpoint: str) -> Endpoint:
    """Check the form of ``endpoint``.

    Accepted: ``tcp://HOST:PORT`` (HOST an IPv4 address, ``[IPv6]``, a host name or ``*``; PORT in 1..65535
    or ``*`` for any free port), ``ipc://PATH`` (at most 107 bytes; where it may lie is
    :func:`check_bindable`'s) and ``inproc://NAME`` (1 to 128 of ``A-Za-z0-9._:-``).

    Raises
    ------
    ValueError
        The endpoint is not of these forms (the message says which part is wrong).
    """
    if not isinstance(endpoint, str):
        raise TypeError(f"an endpoint is a string, got {type(endpoint).__name__}")
    scheme, sep, address = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        raise ValueError("an endpoint is tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if scheme == "tcp":
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            raise ValueError("a tcp endpoint is tcp://HOST:PORT")
        if port != "*" and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"tcp port must be in 1..65535 or '*', got {port[:20]!r}")
        if host != "*" and not _valid_host(host):
            raise ValueError(f"tcp host {host[:60]!r} is not an IP address, a [IPv6] address, a host name or '*'")
    elif scheme == "ipc":
        if not address or len(os.fsencode(address)) > MAX_IPC_PATH_BYTES or "\x00" in address:
            raise ValueError(f"an ipc path has 1 to {MAX_IPC_PATH_BYTES} bytes and no NUL")
    elif _INPROC.match(address) is None:
        raise ValueError("an inproc name has 1 to 128 characters of A-Z a-z 0-9 . _ : -")
    return Endpoint(scheme, address)


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return _HOSTNAME.match(host) is not None


def check_bindable(field: str, endpoint: str, socket_dir: Path | None) -> None:
    """Refuse an endpoint a job must not bind, before any socket is made.

    ``ipc`` paths must lie inside ``socket_dir`` (created if missing) and may not name an existing file
    other than a stale socket (one nobody listens on): a live socket is another job's (409), any other file
    would be deleted by libzmq.

    Parameters
    ----------
    field : {'ingest', 'publish', 'push'}
    endpoint : str
    socket_dir : pathlib.Path or None
        The service's socket folder; None refuses every ``ipc`` endpoint.

    Raises
    ------
    EndpointError
        With ``conflict`` False for a malformed endpoint or a path outside ``socket_dir``, True for a path
        that is taken.
    """
    try:
        parsed = parse_endpoint(endpoint)
    except (TypeError, ValueError) as exc:
        raise EndpointError(field, str(endpoint), str(exc), conflict=False) from None
    if parsed.scheme != "ipc":
        return
    if parsed.address.startswith("@"):  # Linux abstract namespace: no file is involved
        return
    if socket_dir is None:
        raise EndpointError(field, endpoint, "ipc endpoints are disabled (no socket_dir is configured)",
                            conflict=False)
    root = Path(socket_dir).resolve()
    path = Path(parsed.address)
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if path.parent != root:
        raise EndpointError(field, endpoint, f"ipc sockets must lie directly in the service's socket folder "
                                             f"(ipc://{root}/NAME)", conflict=False)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise EndpointError(field, endpoint, "a file that is not a socket exists at that path; it is kept")
    if _listening(path):
        raise EndpointError(field, endpoint, "the socket is in use (another job binds it)")


def _listening(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError as exc:
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
        return True
