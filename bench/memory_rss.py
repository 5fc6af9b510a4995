"""Resident memory of another process, for the bench/memory_*.py scripts: samples and the peak, from /proc."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LIMIT_MB = 3 * 1024  # the service's bound (issue 15: 3 GB)


def status_kb(pid: int, key: str) -> int | None:
    """A ``/proc/PID/status`` figure in kB (``VmRSS``, ``VmHWM`` the peak RSS); None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler(threading.Thread):
    """Samples ``VmRSS`` of process ``pid`` every ``interval_s`` s into ``samples``: (seconds, MB)."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self.stop.is_set():
            kb = status_kb(self.pid, "VmRSS")
            if kb is not None:
                self.samples.append((time.perf_counter() - self.t0, kb / 1024))
            self.stop.wait(self.interval_s)

    def mark(self) -> float:
        """Seconds since the sampler was made (for phase marks)."""
        return time.perf_counter() - self.t0

    def finish(self) -> None:
        self.stop.set()
        self.join()


def run_sampled(name: str, cmd: Sequence[str], sampler: Callable[[int], RssSampler], stdout=None
                ) -> tuple[float, RssSampler]:
    """Run ``cmd`` (``name`` in errors) to its end while ``sampler(pid)`` samples it.

    Returns its peak RSS (MiB, the kernel's ru_maxrss of the process itself) and the sampler.

    Raises
    ------
    RuntimeError
        The command exited with a non-zero status.
    """
    proc = subprocess.Popen(list(cmd), stdout=stdout)
    sampling = sampler(proc.pid)
    sampling.start()
    _, status, usage = os.wait4(proc.pid, 0)
    sampling.finish()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited with status {proc.returncode}")
    return usage.ru_maxrss / 1024, sampling


def plot_rss(curves: dict[str, RssSampler], marks: dict[str, float], limit_mb: float, path: Path,
             title: str) -> None:
    """PNG of RSS against time, one curve per sampler, the bound dashed, phase marks as vertical lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    top = limit_mb
    for label, sampler in curves.items():
        t = [s[0] for s in sampler.samples]
        mb = [s[1] for s in sampler.samples]
        top = max(top, max(mb, default=0.0))
        ax.plot(t, mb, lw=1.2, label=label)
    ax.axhline(limit_mb, color="tab:red", ls="--", lw=1, label=f"bound {limit_mb / 1024:.0f} GB")
    for name, x in marks.items():
        ax.axvline(x, color="0.6", lw=0.8)
        ax.text(x, limit_mb * 0.98, " " + name, rotation=90, va="top", fontsize=7, color="0.3")
    ax.set(xlabel="time (s)", ylabel="RSS (MB)", title=title, ylim=(0, top * 1.1))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
