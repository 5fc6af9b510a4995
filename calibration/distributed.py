"""The fit's tile functions on a dask.distributed cluster: a LocalCluster (``local:N``) or a scheduler address.

:func:`dask_executor` gives a :class:`concurrent.futures.Executor` whose tasks run on the cluster's
workers (dask's ``Client.get_executor``), so :func:`rtnstream.calibration.fit.fit_bias_stack` maps its band
functions there exactly as on a process pool. A task gets the stack's description (file paths, frame
order, headers) and its band's row range, and reads its band from the files itself: the workers must see
the files under the same paths (shared storage). The stack's description goes to the workers once
(:meth:`DaskBands.share`), not with every task; only band-sized results come back.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["DaskBands", "SchedulerError", "correct_series", "dask_executor", "parse_scheduler"]

_LOCAL = re.compile(r"local:(\d+)")
# a network address dask can dial: a host (a bracketed IPv6 one too) and its port
_HOST_PORT = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):\d{1,5}")
_INET_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


class SchedulerError(ValueError):
    """A ``scheduler`` that is malformed, cannot be reached or has no workers (the message starts with
    ``scheduler``)."""


def parse_scheduler(scheduler: str) -> int | str:
    """The worker count of ``local:N``, or the scheduler address itself (e.g. ``tcp://10.0.0.5:8786``).

    Raises
    ------
    SchedulerError
        ``local:`` with a count below 1, or an address without a host and port (the message names
        ``scheduler``).
    """
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise SchedulerError(f"scheduler must be 'local:N' or a dask scheduler address, got {scheduler!r}")
    match = _LOCAL.fullmatch(scheduler.strip())
    if match:
        n = int(match.group(1))
        if n < 1:
            raise SchedulerError(f"scheduler: local:N needs N >= 1 workers, got {scheduler!r}")
        return n
    scheme, _, rest = scheduler.strip().rpartition("://")
    if not (_HOST_PORT.fullmatch(rest) if scheme in ("", *_INET_SCHEMES) else scheme.isidentifier() and rest):
        raise SchedulerError(f"scheduler must be 'local:N' (N workers) or a scheduler address with its port "
                             f"(e.g. tcp://10.0.0.5:8786), got {scheduler!r}")
    return scheduler.strip()


class DaskBands:
    """A running dask client and its executor, as the fit uses them.

    Attributes
    ----------
    client : distributed.Client
    executor : concurrent.futures.Executor
        Submits to the cluster; its futures are :class:`concurrent.futures.Future`.
    n_workers : int
        Workers of the cluster when it was joined.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.executor: Executor = client.get_executor(pure=False)
        self.n_workers = len(client.scheduler_info()["workers"])
        if self.n_workers < 1:
            raise SchedulerError(f"scheduler: the cluster at {client.scheduler.address} has no workers")

    def share(self, value: Any) -> Any:
        """``value`` placed on every worker once; pass the returned future to tasks instead of ``value``."""
        return self.client.scatter(value, broadcast=True, hash=False)


@contextlib.contextmanager
def dask_executor(scheduler: str, processes: bool = True) -> Iterator[DaskBands]:
    """Join (an address) or start (``local:N``) a dask.distributed cluster for the fit's bands.

    Parameters
    ----------
    scheduler : str
        ``local:N``: a LocalCluster of N single-threaded workers, closed at the end; otherwise the address
        of a running ``dask scheduler`` (its workers must reach the bias files by the same paths).
    processes : bool
        ``local:N`` only: workers in their own processes (True) or as threads of this one (False).

    Raises
    ------
    ImportError
        dask.distributed is not installed (the message says which ``pip install`` to run).
    SchedulerError
        A malformed ``scheduler``, a scheduler that does not answer within dask's connect timeout
        (``distributed.comm.timeouts.connect``, e.g. ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s``), or a
        cluster without workers.
    """
    target = parse_scheduler(scheduler)
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError("scheduler: fitting on dask needs dask.distributed: pip install 'rtnstream[scale]'"
                          ) from exc
    with contextlib.ExitStack() as stack:
        if isinstance(target, int):
            cluster = stack.enter_context(LocalCluster(n_workers=target, threads_per_worker=1, processes=processes,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(target))
            except OSError as exc:  # refused, unresolvable or timed out (TimeoutError is an OSError)
                raise SchedulerError(f"scheduler: cannot reach the dask scheduler at {target}: {exc}") from None
        bands = DaskBands(client)
        stack.callback(bands.executor.shutdown, wait=True)
        yield bands


@functools.lru_cache(maxsize=2)
def _cube(path: str, mtime_ns: int) -> Any:
    """The cube of ``path`` read once per worker (and again only when the file changes)."""
    from rtnstream.kernels.cube import read_cube

    return read_cube(path)


def _series_task(cube_path: str, series: Any, origin: tuple[int, int] | None, forced: dict, opts: Any,
                 outdir: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Correct one series on a worker: ``offline._run_series`` with the cube read there by path."""
    from rtnstream.guards import cube_part
    from rtnstream.offline import _run_series

    cube = _cube(cube_path, os.stat(cube_path).st_mtime_ns)
    bad: list[dict[str, str]] = []
    with tqdm(disable=True) as bar:
        result = _run_series(series, cube_part(cube, origin, series.files[0].shape), origin, forced, opts, outdir,
                             bar, bad)
    return result, bad


def correct_series(scheduler: str, cube_path: str | os.PathLike, series: Sequence[Any], checks: dict[int, tuple],
                   opts: Any, outdir: Path, bar: tqdm, bad: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Correct ``series`` on a dask cluster, one task each; returns their summaries in ``series`` order.

    Parameters
    ----------
    scheduler : str
        ``local:N`` or a scheduler address (:func:`dask_executor`); the workers must reach the cube, the
        inputs and ``outdir`` by the same paths.
    cube_path : path-like
        The cube's file, read by each worker.
    series : sequence of rtnstream.series.Series
    checks : dict
        Series number -> (origin, forced guards), from ``offline.correct_files``.
    opts : rtnstream.offline._Options
    outdir : pathlib.Path
    bar : tqdm
        Advanced by a series' frames when it is done.
    bad : list
        Files passed over (``skip_bad``) are appended.
    """
    cube_path = str(Path(cube_path).resolve())
    with dask_executor(scheduler) as dask:
        futures = {dask.executor.submit(_series_task, cube_path, s, *checks[s.number], opts, outdir): k
                   for k, s in enumerate(series)}
        results: list[Any] = [None] * len(series)
        for fut in concurrent.futures.as_completed(futures):
            k = futures[fut]
            results[k], skipped = fut.result()
            bad.extend(skipped)
            bar.update(series[k].n_frames)
    return results
