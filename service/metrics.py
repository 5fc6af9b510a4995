"""Prometheus metrics: a collector that reads the live counters of this process's jobs at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from rtnstream.service.jobs import JobManager

__all__ = ["JobCollector", "make_registry"]

_COUNTERS = {
    "frames_in": "messages received (accepted start/end excepted)",
    "frames_out": "frames delivered (with a lossless output: acknowledged by its consumer)",
    "dropped": "frames dropped by the drop overload policy",
    "passthrough": "frames published uncorrected by the passthrough overload policy",
    "seq_gaps": "frames missing according to sequence numbers",
    "seq_out_of_order": "frames whose sequence number did not increase (repeats, restarts)",
    "abandoned": "frames received but never published because a stop timed out",
    "vetoed": "RTN pixels left unchanged by the variability veto",
    "out_of_table": "RTN pixels outside the threshold table",
    "series_finished": "series flushed",
}


class JobCollector(Collector):
    """Counters and gauges per job (labels ``job``, ``camera``) of the jobs this process created, and whether
    Redis answers (``rtnstream_redis_up``)."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator:
        labels = ["job", "camera"]
        counters = {name: CounterMetricFamily(f"rtnstream_{name}", text, labels=labels)
                    for name, text in _COUNTERS.items()}
        rejected = CounterMetricFamily("rtnstream_rejected", "messages rejected, by reason",
                                       labels=[*labels, "reason"])
        corrections = CounterMetricFamily("rtnstream_corrections", "RTN pixels corrected, by jump side",
                                          labels=[*labels, "side"])
        fps = GaugeMetricFamily("rtnstream_throughput_fps", "published frames per second (recent window)",
                                labels=labels)
        latency = GaugeMetricFamily("rtnstream_latency_recent_seconds",
                                    "arrival-to-publish latency quantiles over the recent window",
                                    labels=[*labels, "quantile"])
        histogram = HistogramMetricFamily("rtnstream_latency_seconds",
                                          "latency to publication, from the frame's arrival or from its header "
                                          "timestamp (source)", labels=[*labels, "source"])
        in_flight = GaugeMetricFamily("rtnstream_in_flight", "frames accepted and not yet delivered",
                                      labels=labels)
        depth = GaugeMetricFamily("rtnstream_queue_depth", "frames waiting between receive and processing",
                                  labels=labels)
        running = GaugeMetricFamily("rtnstream_job_running", "1 while the job's pipeline runs", labels=labels)
        redis_up = GaugeMetricFamily("rtnstream_redis_up", "1 when Redis (job state) answers a ping, else 0 "
                                     "(jobs go on correcting; their state writes wait)")
        redis_up.add_metric([], 1.0 if self.manager.store.ping() else 0.0)
        for job in self.manager.local_jobs():
            s = job.status()
            lab = [job.id, job.config.camera]
            c = s["counters"]
            for name, family in counters.items():
                family.add_metric(lab, c.get(name, 0))
            for reason, n in c.get("rejected", {}).items():
                rejected.add_metric([*lab, reason], n)
            corrections.add_metric([*lab, "low"], c.get("corrections_low", 0))
            corrections.add_metric([*lab, "high"], c.get("corrections_high", 0))
            r = s["rates"]
            fps.add_metric(lab, r.get("fps", 0.0))
            for q, key in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
                if r.get(key) is not None:
                    latency.add_metric([*lab, q], r[key] / 1e3)
            depth.add_metric(lab, s["queue_depth"] or 0)
            in_flight.add_metric(lab, c.get("in_flight", 0))
            if job.pipeline is not None:
                for source, hist in job.pipeline.rates.histograms.items():
                    buckets, total_s = hist.snapshot()
                    histogram.add_metric([*lab, source], buckets, total_s)
            running.add_metric(lab, 1.0 if job.pipeline is not None else 0.0)
        yield from counters.values()
        yield from (rejected, corrections, fps, latency, histogram, depth, in_flight, running, redis_up)


def make_registry(manager: JobManager) -> CollectorRegistry:
    """A registry of its own for one app (several apps can live in one process, e.g. in tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(manager))
    return registry
