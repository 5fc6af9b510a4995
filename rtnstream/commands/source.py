"""``rtnstream source``: frames of a real camera into a job's ingest (INDI listener, ASCOM Alpaca camera).

Also the delivery options every frame source shares (:func:`add_delivery_options`): ``camera`` and ``replay``
use them too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["configure", "run", "add_delivery_options", "deliver"]

log = logging.getLogger(__name__)


def add_delivery_options(parser: argparse.ArgumentParser, ingest_required: bool = True) -> None:
    """The options of every frame source: where the job listens, and how to learn of its rejections."""
    parser.add_argument("--ingest", required=ingest_required, metavar="ENDPOINT",
                        help="the job's ingest endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--service", metavar="URL",
                        help="the service's base URL (e.g. http://127.0.0.1:8000): the job's rejections are "
                             "read from its counters and reported, and any rejection makes the exit status 1")
    parser.add_argument("--job", metavar="ID", help="the job's id (default: the running job with this ingest)")
    parser.add_argument("--token", help="bearer token of the service, when it has one")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="fail when nothing accepts a connection at the ingest endpoint within S seconds")


def deliver(args: argparse.Namespace, send: Callable[[Any], object]) -> int:
    """Open the sender :func:`add_delivery_options`' options ask for, run ``send(sender)``, close it and report.

    Returns
    -------
    int
        The exit status: 0, or 1 when the job rejected any message (known with ``--service``).

    Raises
    ------
    SourceError
        Nothing accepts a connection at ``--ingest``, or ``--service`` / ``--job`` name no job.
    """
    from rtnstream.clients._source import finish, open_sender

    if not args.connect_timeout > 0:
        raise SystemExit(f"rtnstream {args.command}: error: --connect-timeout must be > 0 (s), "
                         f"got {args.connect_timeout}")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll of the job's counters
    sender = open_sender(args.ingest, args.camera, args.service, args.job, args.connect_timeout, args.token)
    try:
        send(sender)
    except BaseException:
        sender.close()
        raise
    return finish(sender, f"rtnstream {args.command}")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with PORT in 1..65535, got {text!r}")
    return host, int(port)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the sub-commands of ``rtnstream source``."""
    from rtnstream.cli import HelpFormatter

    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    indi = kinds.add_parser("indi", formatter_class=HelpFormatter,
                            help="passive INDI client: every image a CCD device sends, as frames",
                            description="Forward every image of an INDI CCD device (exposures that another "
                                        "client such as KStars/Ekos triggers) to a job's ingest.")
    indi.add_argument("--server", required=True, type=_host_port, metavar="HOST:PORT",
                      help="the INDI server, e.g. 127.0.0.1:7624")
    indi.add_argument("--device", required=True, help="the CCD device, e.g. 'CCD Simulator'")
    indi.add_argument("--camera", required=True, help="camera name in the headers (the job's camera)")
    indi.add_argument("--idle-s", type=float, metavar="S",
                      help="end the series after S seconds without an image (default: only a settings change)")
    add_delivery_options(indi)

    alpaca = kinds.add_parser("alpaca", formatter_class=HelpFormatter,
                              help="ASCOM Alpaca camera: take a series of exposures, as frames",
                              description="Take --count exposures with an ASCOM Alpaca camera (any ASCOM camera "
                                          "through ASCOM Remote, or a native Alpaca device) and send them to a "
                                          "job's ingest as one series.")
    alpaca.add_argument("--url", required=True, help="the Alpaca server, e.g. http://127.0.0.1:11111")
    alpaca.add_argument("--device", type=int, default=0, metavar="N", help="the camera's device number")
    alpaca.add_argument("--exposure", type=float, required=True, metavar="S", help="exposure time, s")
    alpaca.add_argument("--count", type=int, required=True, metavar="N", help="exposures in the series")
    alpaca.add_argument("--dark", action="store_true", help="dark frames (shutter closed)")
    alpaca.add_argument("--bin", type=int, metavar="N", help="set binning N x N first (default: as set)")
    alpaca.add_argument("--subframe", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                        help="set the subframe first, binned pixels (default: as set)")
    alpaca.add_argument("--camera", required=True, help="camera name in the headers (the job's camera)")
    alpaca.add_argument("--series", help="series id (default: a new unique one)")
    add_delivery_options(alpaca)


def run(args: argparse.Namespace) -> int:
    """Run the source until it ends (INDI: SIGINT / SIGTERM); returns 0, or 1 when the job rejected frames."""
    if args.kind == "indi":
        from rtnstream.clients.indi import INDISource  # the cameras extra: named before anything connects

        if args.idle_s is not None and not args.idle_s > 0:
            raise SystemExit(f"rtnstream source: error: --idle-s must be > 0 (s), got {args.idle_s}")
        return deliver(args, lambda sender: _listen_indi(args, INDISource, sender))
    camera = _alpaca_camera(args)
    return deliver(args, lambda sender: _acquire_alpaca(args, camera, sender))


def _alpaca_camera(args: argparse.Namespace):  # -> alpaca.camera.Camera (the cameras extra)
    """The connected camera, with --bin and --subframe applied."""
    from urllib.parse import urlsplit

    from alpaca.camera import Camera

    from rtnstream.clients.alpaca import ALPACA_ERRORS

    if args.count < 1:
        raise SystemExit(f"rtnstream source: error: --count must be >= 1, got {args.count}")
    if not args.exposure >= 0:
        raise SystemExit(f"rtnstream source: error: --exposure must be >= 0 (s), got {args.exposure}")
    url = urlsplit(args.url if "//" in args.url else f"http://{args.url}")
    if url.scheme not in ("http", "https") or not url.netloc:
        raise SystemExit(f"rtnstream source: error: --url must be http(s)://HOST:PORT, got {args.url!r}")
    camera = Camera(url.netloc, args.device, protocol=url.scheme)
    try:
        camera.Connected = True
        if args.bin is not None:
            camera.BinX = camera.BinY = args.bin
        if args.subframe is not None:
            camera.StartX, camera.StartY, camera.NumX, camera.NumY = args.subframe
        log.info("camera %s (%s device %d): %d x %d pixels, binning %d x %d", camera.Name, args.url, args.device,
                 camera.NumX, camera.NumY, camera.BinX, camera.BinY)
    except ALPACA_ERRORS as exc:
        raise SystemExit(f"rtnstream source: error: --url {args.url} --device {args.device}: "
                         f"{type(exc).__name__}: {exc}") from None
    return camera


def _acquire_alpaca(args: argparse.Namespace, camera, sender) -> None:
    from rtnstream.clients.alpaca import ALPACA_ERRORS, acquire

    try:
        series = acquire(sender, camera, args.exposure, args.count, args.dark, args.series, progress=True)
    except ALPACA_ERRORS as exc:
        raise SystemExit(f"rtnstream source: error: camera at {args.url}: {type(exc).__name__}: {exc}") from None
    log.info("series %s: %d %s frames of %g s", series, args.count, "dark" if args.dark else "light",
             args.exposure)


def _listen_indi(args: argparse.Namespace, source_class: type, sender) -> None:
    host, port = args.server
    client = source_class(host, port, args.device, sender, args.idle_s, progress=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, client.shutdown)
        await client.asyncrun()

    log.info("listening to %s on %s:%d; stop with Ctrl-C or SIGTERM", args.device, host, port)
    try:
        asyncio.run(main())
    finally:
        client.finish()
