"""Redis key names: the only module that builds them (every key starts with ``rtnstream:``).

A job id is 12 lower-case hex digits (:data:`JOB_ID_PATTERN`); a key is never built from anything else, so
``<id>:series`` cannot name another job's series hash.
"""

from __future__ import annotations

import re

__all__ = ["PREFIX", "JOB_ID_PATTERN", "is_job_id", "check_job_id", "jobs_index", "job", "job_events",
           "job_series", "instance"]

PREFIX = "rtnstream"
#: Job ids: 12 lower-case hexadecimal digits.
JOB_ID_PATTERN = r"^[0-9a-f]{12}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)


def is_job_id(value: object) -> bool:
    """True when ``value`` is a job id (a str matching :data:`JOB_ID_PATTERN`)."""
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


def check_job_id(job_id: object) -> str:
    """``job_id`` itself.

    Raises
    ------
    ValueError
        ``job_id`` is not 12 lower-case hex digits.
    """
    if not is_job_id(job_id):
        raise ValueError(f"job_id must be 12 lower-case hex digits, got {job_id!r:.40}")
    return job_id


def jobs_index() -> str:
    """Sorted set of job ids, scored by creation time (unix seconds)."""
    return f"{PREFIX}:jobs"


def job(job_id: str) -> str:
    """Hash of one job: ``state``, ``config``, ``counters``, timestamps, backend (each value JSON)."""
    return f"{PREFIX}:job:{check_job_id(job_id)}"


def job_events(job_id: str) -> str:
    """Capped stream of the job's events (state changes, series start / end, errors)."""
    return f"{PREFIX}:job:{check_job_id(job_id)}:events"


def job_series(job_id: str) -> str:
    """Hash ``<index>`` -> JSON summary of each finished series of the job, ``index`` its 1-based ordinal in
    the job (a series id used twice has two entries)."""
    return f"{PREFIX}:job:{check_job_id(job_id)}:series"


def instance(instance_id: str) -> str:
    """Lease of one service process (string: its ``node_id``), expiring unless the process renews it."""
    if not is_job_id(instance_id):  # instance ids are made like job ids
        raise ValueError(f"instance_id must be 12 lower-case hex digits, got {instance_id!r:.40}")
    return f"{PREFIX}:instance:{instance_id}"
