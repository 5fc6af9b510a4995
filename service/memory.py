"""Freed heap memory handed back to the operating system: glibc's ``malloc_trim``, once or periodically.

glibc keeps the memory of freed buffers below its (dynamic, up to 32 MB) mmap threshold in its arenas, so
after a burst of frames or a large cube the resident size stays at its peak. ``malloc_trim(0)`` returns the
free pages of every arena. Elsewhere (musl, macOS) there is nothing to call and :func:`trim_heap` does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable

__all__ = ["can_trim_heap", "trim_heap", "HeapTrimmer"]

@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def can_trim_heap() -> bool:
    """True where the C library has ``malloc_trim`` (glibc)."""
    return _malloc_trim() is not None


def trim_heap() -> bool:
    """Give the free pages of the C heap back to the operating system.

    Returns
    -------
    bool
        True when memory was released; False when there was none to release or no ``malloc_trim`` here.
    """
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False


class HeapTrimmer:
    """A daemon thread that calls :func:`trim_heap` every ``period_s`` seconds until :meth:`stop`.

    Parameters
    ----------
    period_s : float > 0
        Seconds between two trims.
    """

    def __init__(self, period_s: float) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtn-heap-trim", daemon=True)

    def start(self) -> HeapTrimmer:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (waits for it)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            trim_heap()
