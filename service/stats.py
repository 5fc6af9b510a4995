"""Live figures of a pipeline: counters, throughput and latency over a sliding window, rate-limited logs."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

__all__ = ["LATENCY_BUCKETS_S", "PipelineCounters", "LatencyHistogram", "RateWindow", "RateLimitedLog"]

_INT64_MAX = 2**63 - 1
#: Upper bounds of the latency histogram's buckets, s (Prometheus ``le``; +Inf is added).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass
class PipelineCounters:
    """Totals since the job started.

    ``frames_in`` counts every message received except accepted start / end messages. Every one of them is in
    exactly one of the other terms, so at every moment (a :meth:`snapshot` is taken under one lock)
    ``frames_in == frames_out + sum(rejected) + dropped + abandoned + in_flight``, and ``in_flight`` is 0
    once the pipeline is idle.

    Attributes
    ----------
    frames_in, frames_out : int
        Messages received (as above) and frames delivered: published, and with a lossless output,
        acknowledged by its consumer (corrected or passed through).
    in_flight : int
        Frames accepted and not yet delivered: queued, held by the engine's temporal window, or waiting
        for the lossless consumer's acknowledgement.
    rejected : collections.Counter
        Rejected messages by reason (keys of :data:`rtnstream.service.protocol.REJECT_REASONS`).
    dropped : int
        Frames dropped by the ``drop`` overload policy.
    passthrough : int
        Frames published uncorrected by the ``passthrough`` overload policy.
    seq_gaps : int
        Frames missing according to the sequence numbers (sum of the gap sizes).
    seq_out_of_order : int
        Frames whose sequence number is not above the series' previous one (repeated, reordered, or a
        producer that restarted its series without a new ``start``); corrected in arrival order.
    abandoned : int
        Frames accepted but never delivered because a stop timed out (a lossless consumer never took them).
    corrections_low, corrections_high, vetoed, out_of_table : int
        RTN pixels corrected (down-jumps, up-jumps), vetoed, out of the threshold table.
    series_started, series_finished : int
    """

    frames_in: int = 0
    frames_out: int = 0
    in_flight: int = 0
    dropped: int = 0
    passthrough: int = 0
    seq_gaps: int = 0
    seq_out_of_order: int = 0
    abandoned: int = 0
    corrections_low: int = 0
    corrections_high: int = 0
    vetoed: int = 0
    out_of_table: int = 0
    series_started: int = 0
    series_finished: int = 0

    def __post_init__(self) -> None:
        self.rejected: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, **increments: int) -> None:
        """Add to counters by name (thread-safe); a counter saturates at 2^63 - 1, it never wraps or
        leaves int64 (a producer's seq jumping to 2^63 - 1 makes a gap that large at once)."""
        with self._lock:
            for name, n in increments.items():
                setattr(self, name, min(getattr(self, name) + n, _INT64_MAX))

    def reject(self, reason: str, n: int = 1, in_flight: bool = False) -> None:
        """Count ``n`` messages as rejected for ``reason``: just received, or (``in_flight``) accepted before."""
        with self._lock:
            if in_flight:
                self.in_flight -= n
            else:
                self.frames_in += n
            self.rejected[reason] += n

    def snapshot(self) -> dict[str, int | dict[str, int]]:
        """A consistent copy as plain data (JSON-ready)."""
        with self._lock:
            d = {name: getattr(self, name) for name in self.__dataclass_fields__}
            d["rejected"] = dict(self.rejected)
        return d


class LatencyHistogram:
    """Cumulative latency histogram (Prometheus buckets :data:`LATENCY_BUCKETS_S`), thread-safe."""

    def __init__(self) -> None:
        self._counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self._sum_s = 0.0
        self._lock = threading.Lock()

    def observe(self, latency_s: float) -> None:
        """Add one latency, s."""
        i = int(np.searchsorted(LATENCY_BUCKETS_S, latency_s))  # first bucket whose bound is >= latency
        with self._lock:
            self._counts[i] += 1
            self._sum_s += latency_s

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """``([(le, cumulative count), ..., ("+Inf", total)], sum of latencies in s)``."""
        with self._lock:
            counts, total_s = list(self._counts), self._sum_s
        cumulative = np.cumsum(counts).tolist()
        bounds = [f"{b:g}" for b in LATENCY_BUCKETS_S] + ["+Inf"]
        return list(zip(bounds, cumulative, strict=True)), total_s


class RateWindow:
    """Publish events (time, latencies, pixels) over the last ``window_s`` seconds, and all-time latency
    histograms.

    Two latencies per frame: from its arrival at the service (``arrival``) and from the producer's header
    ``timestamp`` (``timestamp``; frames without one have none). The second includes the transport and the
    time the frame waited in the producer's and the service's socket queues, and the clock offset between
    the producer and this host.

    Parameters
    ----------
    window_s : float > 0
        Span of the figures, s.
    max_samples : int
        Cap on the samples kept (the oldest go first).
    """

    def __init__(self, window_s: float, max_samples: int = 20000) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        self.window_s = float(window_s)
        self._started_s = time.monotonic()
        self._samples: deque[tuple[float, float, float, int]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()
        self.histograms = {"arrival": LatencyHistogram(), "timestamp": LatencyHistogram()}

    def record(self, t_publish_s: float, latency_s: float, n_pixels: int,
               latency_from_timestamp_s: float | None = None) -> None:
        """Add one published frame: ``time.monotonic()`` seconds, latency from arrival (s), pixels in the
        frame, latency from the header's timestamp (s, or None)."""
        self.histograms["arrival"].observe(latency_s)
        if latency_from_timestamp_s is not None:
            self.histograms["timestamp"].observe(latency_from_timestamp_s)
        with self._lock:
            self._samples.append((t_publish_s, latency_s,
                                  np.nan if latency_from_timestamp_s is None else latency_from_timestamp_s,
                                  n_pixels))

    def figures(self, now_s: float | None = None) -> dict[str, float | int | None]:
        """Throughput and latency over the window.

        Returns
        -------
        dict
            ``fps`` (frames/s), ``mpix_per_s`` (10^6 pixels/s), ``p50_ms``, ``p99_ms`` (latency from arrival
            to publish, ms; None without samples), ``ts_p50_ms``, ``ts_p99_ms``, ``ts_samples`` (latency
            from the header's timestamp), ``samples``, ``window_s``. Rates are averaged over the window, or
            over the time since the window was created when that is shorter.
        """
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            recent = [s for s in self._samples if s[0] >= now_s - self.window_s]
        out: dict[str, float | int | None] = {"fps": 0.0, "mpix_per_s": 0.0, "p50_ms": None, "p99_ms": None,
                                              "samples": 0, "ts_p50_ms": None, "ts_p99_ms": None,
                                              "ts_samples": 0, "window_s": self.window_s}
        if not recent:
            return out
        lat_ms = np.array([s[1] for s in recent]) * 1e3
        ts_ms = np.array([s[2] for s in recent]) * 1e3
        ts_ms = ts_ms[np.isfinite(ts_ms)]
        pixels = sum(s[3] for s in recent)
        span_s = max(min(self.window_s, now_s - self._started_s), 1e-3)
        out.update(fps=len(recent) / span_s, mpix_per_s=pixels / span_s / 1e6,
                   p50_ms=float(np.percentile(lat_ms, 50)), p99_ms=float(np.percentile(lat_ms, 99)),
                   samples=len(recent), ts_samples=int(ts_ms.size))
        if ts_ms.size:
            out.update(ts_p50_ms=float(np.percentile(ts_ms, 50)), ts_p99_ms=float(np.percentile(ts_ms, 99)))
        return out


class RateLimitedLog:
    """Log a warning at most once per ``interval_s`` per key, with the number of repeats suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self.logger = logger
        self.interval_s = float(interval_s)
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged less than ``interval_s`` ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] += 1
                return False
            self._last[key] = now
            repeats = self._suppressed.pop(key, 0)
        suffix = f" ({repeats} more since the last report)" if repeats else ""
        self.logger.warning(message + suffix, *args)
        return True
