"""The fit's tile functions on a dask.distributed cluster: a LocalCluster (``local:N``) or a scheduler address.

:func:`dask_executor` gives a :class:`concurrent.futures.Executor` whose tasks run on the cluster's
workers (dask's ``Client.get_executor``), so :func:`rtnstream.calibration.fit.fit_bias_stack` maps its band
functions there exactly as on a process pool. A task gets the stack's description (file paths, frame
order, headers) and its band's row range, and reads its band from the files itself: the workers must see
the files under the same paths (shared storage). The stack's description goes to the workers once
(:meth:`DaskBands.share`), not with every task; only band-sized results come back.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

__all__ = ["DaskBands", "dask_executor", "parse_scheduler"]

_LOCAL = re.compile(r"local:(\d+)")


def parse_scheduler(scheduler: str) -> int | str:
    """The worker count of ``local:N``, or the scheduler address itself (e.g. ``tcp://10.0.0.5:8786``).

    Raises
    ------
    ValueError
        ``local:`` with a count below 1, or an empty address (the message names ``scheduler``).
    """
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise ValueError(f"scheduler must be 'local:N' or a dask scheduler address, got {scheduler!r}")
    match = _LOCAL.fullmatch(scheduler.strip())
    if match:
        n = int(match.group(1))
        if n < 1:
            raise ValueError(f"scheduler: local:N needs N >= 1 workers, got {scheduler!r}")
        return n
    if scheduler.startswith("local"):
        raise ValueError(f"scheduler must be 'local:N' (N workers) or an address, got {scheduler!r}")
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
            raise ValueError(f"scheduler: the cluster at {client.scheduler.address} has no workers")

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
    ValueError
        A malformed ``scheduler``, or a cluster without workers.
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
            client = stack.enter_context(Client(target))
        bands = DaskBands(client)
        stack.callback(bands.executor.shutdown, wait=True)
        yield bands
