"""Pipeline figures: counters, throughput / latency window, rate-limited rejection logs."""

import logging
import time

import numpy as np
import pytest

from rtnstream.service.stats import PipelineCounters, RateLimitedLog, RateWindow


def test_counters_add_reject_and_snapshot():
    c = PipelineCounters()
    c.add(frames_in=3, frames_out=2, in_flight=1)
    c.reject("json")
    c.reject("engine", in_flight=True)  # the frame in flight failed
    snap = c.snapshot()
    assert snap["frames_in"] == 4 and snap["frames_out"] == 2 and snap["in_flight"] == 0
    assert snap["rejected"] == {"json": 1, "engine": 1}
    snap["rejected"]["json"] = 99  # a copy: the live counters do not change
    assert c.snapshot()["rejected"]["json"] == 1


def test_rate_window_figures_follow_the_recorded_samples():
    w = RateWindow(window_s=10.0)
    now = time.monotonic() + 100.0  # window created 100 s "ago": rates over the full 10 s
    rng = np.random.default_rng(0)
    lat_s = rng.uniform(0.01, 0.2, 50)
    for k, lat in enumerate(lat_s):
        w.record(now - 9.5 + k * 0.1, float(lat), 1000)
    w.record(now - 30.0, 5.0, 1000)  # outside the window: ignored
    f = w.figures(now)
    assert f["samples"] == 50
    assert f["fps"] == pytest.approx(50 / 10.0)
    assert f["mpix_per_s"] == pytest.approx(50 * 1000 / 10.0 / 1e6)
    assert f["p50_ms"] == pytest.approx(np.percentile(lat_s * 1e3, 50))
    assert f["p99_ms"] == pytest.approx(np.percentile(lat_s * 1e3, 99))
    assert RateWindow(10.0).figures()["p99_ms"] is None
    with pytest.raises(ValueError, match="window_s"):
        RateWindow(0)


def test_each_reason_is_logged_once_per_interval(caplog):
    log = RateLimitedLog(logging.getLogger("test.rl"), interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="test.rl"):
        assert log.warning("json", "bad %s", 1)
        assert not log.warning("json", "bad %s", 2)
        assert log.warning("bytes", "short %s", 1)
    assert [r.getMessage() for r in caplog.records] == ["bad 1", "short 1"]
    again = RateLimitedLog(logging.getLogger("test.rl"), interval_s=0)
    with caplog.at_level(logging.WARNING, logger="test.rl"):
        caplog.clear()
        again.warning("json", "a")
        again.warning("json", "b")
    assert [r.getMessage() for r in caplog.records] == ["a", "b"]


def test_counters_saturate_at_int64():
    c = PipelineCounters()
    c.add(seq_gaps=2**63 - 1)
    c.add(seq_gaps=2**63 - 1)
    assert c.snapshot()["seq_gaps"] == 2**63 - 1
