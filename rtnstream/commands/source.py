"""``rtnstream source``: frames of a real camera into a job's ingest (INDI listener, ASCOM Alpaca camera).

Also the delivery options every frame source shares (:func:`add_delivery_options`): ``camera`` and ``replay``
use them too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

__all__ = ["configure", "run", "add_delivery_options", "open_sender"]

log = logging.getLogger(__name__)


def add_delivery_options(parser: argparse.ArgumentParser) -> None:
    """The options of every frame source: where the job listens, and how to learn of its rejections."""
    parser.add_argument("--ingest", required=True, metavar="ENDPOINT",
                        help="the job's ingest endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--service", metavar="URL",
                        help="the service's base URL (e.g. http://127.0.0.1:8000): the job's rejections are "
                             "read from its counters and reported, and any rejection makes the exit status 1")
    parser.add_argument("--job", metavar="ID", help="the job's id (default: the running job with this ingest)")
    parser.add_argument("--token", help="bearer token of the service, when it has one")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="fail when nothing accepts a connection at the ingest endpoint within S seconds")


def open_sender(args: argparse.Namespace):  # -> SourceSender (the service extra)
    """The :class:`~rtnstream.clients._source.SourceSender` that :func:`add_delivery_options`' options ask for."""
    from rtnstream.clients._source import open_sender as _open

    if not args.connect_timeout > 0:
        raise SystemExit(f"rtnstream {args.command}: error: --connect-timeout must be > 0 (s), "
                         f"got {args.connect_timeout}")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll of the job's counters
    return _open(args.ingest, args.camera, args.service, args.job, args.connect_timeout, args.token)


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


def run(args: argparse.Namespace) -> int:
    """Run the source until it ends (INDI: SIGINT / SIGTERM); returns 0, or 1 when the job rejected frames."""
    from rtnstream.clients._source import finish

    if args.kind == "indi":
        if args.idle_s is not None and not args.idle_s > 0:
            raise SystemExit(f"rtnstream source: error: --idle-s must be > 0 (s), got {args.idle_s}")
        sender = open_sender(args)
        try:
            _listen_indi(args, sender)
        except BaseException:
            sender.close()
            raise
        return finish(sender, "source indi")
    raise SystemExit(f"rtnstream source: error: unknown kind {args.kind!r}")


def _listen_indi(args: argparse.Namespace, sender) -> None:
    from rtnstream.clients.indi import INDISource

    host, port = args.server
    client = INDISource(host, port, args.device, sender, args.idle_s, progress=True)

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
