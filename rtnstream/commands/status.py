"""``rtnstream status``: jobs of a running service and their counters, in the terminal."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

__all__ = ["configure", "run", "format_jobs"]

_COLUMNS = ("job", "camera", "state", "backend", "in", "out", "rejected", "dropped", "pass", "gaps", "low",
            "high", "veto", "fps", "p50 ms", "p99 ms")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream status``."""
    parser.add_argument("job", nargs="?", help="one job's id (default: every job)")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the service's base URL")
    parser.add_argument("--token", help="bearer token (not needed to read)")
    parser.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_jobs(jobs: list[dict[str, Any]]) -> str:
    """A text table of jobs (``GET /v1/jobs`` items), one line each."""
    rows = [_COLUMNS]
    for j in jobs:
        c = j["counters"]
        rows.append((j["id"], j["config"]["camera"], j["state"], j.get("backend") or "-", c["frames_in"],
                     c["frames_out"], sum(c["rejected"].values()), c["dropped"], c["passthrough"],
                     c["seq_gaps"], c["corrections_low"], c["corrections_high"], c["vetoed"],
                     _fmt(j["throughput"].get("fps")), _fmt(j["latency_ms"]["p50"]),
                     _fmt(j["latency_ms"]["p99"])))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(str(v).rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    rejected = {j["id"]: j["counters"]["rejected"] for j in jobs if j["counters"]["rejected"]}
    lines += [f"rejected by {job}: " + ", ".join(f"{k} {v}" for k, v in sorted(r.items()))
              for job, r in rejected.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the table (repeatedly with ``--watch``); returns 0."""
    from rtnstream.clients.control import ControlClient  # httpx: the service extra

    logging.getLogger("httpx").setLevel(logging.WARNING)
    with ControlClient(args.url, args.token) as api:
        while True:
            jobs = [api.get_job(args.job)] if args.job else api.list_jobs()
            print(format_jobs(jobs) if jobs else "no jobs", flush=True)
            if not args.watch:
                return 0
            try:
                time.sleep(args.watch)
            except KeyboardInterrupt:
                return 0
            print()
