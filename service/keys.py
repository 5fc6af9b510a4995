"""Redis key names: the only module that builds them (every key starts with ``rtnstream:``)."""

from __future__ import annotations

__all__ = ["PREFIX", "jobs_index", "job", "job_events", "job_series"]

PREFIX = "rtnstream"


def jobs_index() -> str:
    """Sorted set of job ids, scored by creation time (unix seconds)."""
    return f"{PREFIX}:jobs"


def job(job_id: str) -> str:
    """Hash of one job: ``state``, ``config``, ``counters``, timestamps, backend (each value JSON)."""
    return f"{PREFIX}:job:{job_id}"


def job_events(job_id: str) -> str:
    """Capped stream of the job's events (state changes, series start / end, errors)."""
    return f"{PREFIX}:job:{job_id}:events"


def job_series(job_id: str) -> str:
    """Hash series id -> JSON summary of each finished series of the job (frames, bias offset file)."""
    return f"{PREFIX}:job:{job_id}:series"
