"""CURVE encryption and authentication of the jobs' ZeroMQ sockets (optional; docs/deploy.md).

Keys are ZeroMQ certificate files as ``zmq.auth.create_certificates`` writes them (``NAME.key`` with the
public key, ``NAME.key_secret`` with both). With the service's secret certificate set, every job socket
(ingest, publish, push) is a CURVE server, and a ZAP authenticator on the service's ZeroMQ context admits
only the clients whose public certificates lie in the configured folder: a producer or consumer without an
admitted key cannot connect, and sends or receives nothing. Clients pass their own secret certificate and
the service's public one (:class:`CurveClient`) to ``FrameSender`` / ``FrameReceiver``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

__all__ = ["CurveServer", "CurveClient", "start_authenticator"]

log = logging.getLogger(__name__)


def _keys(path: Path, what: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: cannot read the ZeroMQ certificate {path}: {exc}") from None
    if secret and secret_key is None:
        raise ValueError(f"{what}: {path} holds no secret key (use the .key_secret file)")
    return public, secret_key


@dataclass(frozen=True)
class CurveServer:
    """The service's CURVE keys.

    Parameters
    ----------
    secret_file : pathlib.Path
        The service's secret certificate (``.key_secret``).

    Raises
    ------
    ValueError
        The file cannot be read or holds no secret key.
    """

    public_key: bytes
    secret_key: bytes

    @classmethod
    def from_file(cls, secret_file: Path) -> CurveServer:
        public, secret = _keys(Path(secret_file), "zmq_curve_secret_file", secret=True)
        return cls(public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (before it binds)."""
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_server = True


@dataclass(frozen=True)
class CurveClient:
    """A client's CURVE keys: its own secret certificate and the service's public one.

    Raises
    ------
    ValueError
        A file cannot be read, or the client file holds no secret key.
    """

    public_key: bytes
    secret_key: bytes
    server_key: bytes

    @classmethod
    def from_files(cls, secret_file: Path, server_public_file: Path) -> CurveClient:
        public, secret = _keys(Path(secret_file), "client certificate", secret=True)
        server, _ = _keys(Path(server_public_file), "service certificate", secret=False)
        return cls(public, secret, server)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the service (before it connects)."""
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_serverkey = self.server_key


def start_authenticator(context: zmq.Context, clients_dir: Path) -> ThreadAuthenticator:
    """Start the ZAP handler of ``context`` admitting the CURVE clients whose public certificates are in
    ``clients_dir`` (stop it with ``.stop()``).

    Raises
    ------
    ValueError
        ``clients_dir`` is not a folder.
    """
    clients_dir = Path(clients_dir)
    if not clients_dir.is_dir():
        raise ValueError(f"zmq_curve_clients_dir: {clients_dir} is not a folder")
    auth = ThreadAuthenticator(context, log=log)
    auth.start()
    auth.configure_curve(domain="*", location=str(clients_dir))
    log.info("ZeroMQ CURVE: admitting the %d client certificate(s) in %s", len(list(clients_dir.glob("*.key"))),
             clients_dir)
    return auth
