"""Job state in Redis: one hash per job, a capped event stream, finished series; writes that survive outages.

Every write goes through a small buffer: :meth:`JobStore.put_job`, :meth:`JobStore.add_event` and
:meth:`JobStore.add_series` record what to write and try at once; what fails while Redis is away stays
buffered (the latest record per job, the events in order) and :meth:`JobStore.flush`, called periodically
by the job manager, writes it when Redis is back. Readers see the error.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any

import redis

from rtnstream.service import keys

__all__ = ["JOB_STATES", "ACTIVE_STATES", "StoreUnavailableError", "JobStore"]

log = logging.getLogger(__name__)

JOB_STATES = ("created", "running", "stopping", "stopped", "failed", "interrupted")
#: States of a job whose pipeline lives in some process; after a restart they become ``interrupted``.
ACTIVE_STATES = ("created", "running", "stopping")
_MAX_PENDING_EVENTS = 10000


class StoreUnavailableError(RuntimeError):
    """Redis cannot be reached (reads only; writes are buffered)."""


def _encode(record: dict[str, Any]) -> dict[str, str]:
    """Hash fields: every value as JSON (None values left out)."""
    return {k: json.dumps(v) for k, v in record.items() if v is not None}


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in raw.items()}


class JobStore:
    """Jobs in Redis (keys from :mod:`rtnstream.service.keys`).

    Parameters
    ----------
    client : redis.Redis
        Client with ``decode_responses=True``.
    events_maxlen : int
        Approximate cap of each job's event stream (``XADD MAXLEN ~``).
    """

    def __init__(self, client: redis.Redis, events_maxlen: int = 1000) -> None:
        self.client = client
        self.events_maxlen = events_maxlen
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time, so a buffered write goes out once
        self._jobs: dict[str, dict[str, Any]] = {}
        self._events: deque[tuple[str, dict[str, str]]] = deque(maxlen=_MAX_PENDING_EVENTS)
        self._series: deque[tuple[str, str, str]] = deque(maxlen=_MAX_PENDING_EVENTS)
        self._available = True

    # ------------------------------------------------------------------ writes (buffered)
    def put_job(self, record: dict[str, Any]) -> bool:
        """Write (or overwrite) the hash of job ``record['id']``; True if Redis has it now."""
        record = {**record, "updated_at": time.time()}
        with self._lock:
            self._jobs[record["id"]] = record
        return self.flush()

    def add_event(self, job_id: str, kind: str, **fields: Any) -> bool:
        """Append an event (``kind`` and string fields) to the job's capped stream."""
        event = {"kind": kind, "time": f"{time.time():.3f}", **{k: str(v) for k, v in fields.items()}}
        with self._lock:
            self._events.append((job_id, event))
        return self.flush()

    def add_series(self, job_id: str, series: str, summary: dict[str, Any]) -> bool:
        """Record a finished series of the job (summary as JSON)."""
        with self._lock:
            self._series.append((job_id, series, json.dumps(summary)))
        return self.flush()

    @property
    def pending(self) -> int:
        """Writes waiting for Redis."""
        with self._lock:
            return len(self._jobs) + len(self._events) + len(self._series)

    def flush(self) -> bool:
        """Write everything buffered; True when nothing is left (False while Redis is away)."""
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            jobs, events, series = dict(self._jobs), list(self._events), list(self._series)
        if not (jobs or events or series):
            return True
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id, record in jobs.items():
                pipe.hset(keys.job(job_id), mapping=_encode(record))
                pipe.zadd(keys.jobs_index(), {job_id: float(record.get("created_at", time.time()))}, nx=True)
            for job_id, event in events:
                pipe.xadd(keys.job_events(job_id), event, maxlen=self.events_maxlen, approximate=True)
            for job_id, name, summary in series:
                pipe.hset(keys.job_series(job_id), name, summary)
            pipe.execute()
        except redis.RedisError as exc:
            if self._available:
                log.warning("Redis unavailable (%s); job state is buffered and written when it returns", exc)
            self._available = False
            return False
        with self._lock:
            for job_id, record in jobs.items():
                if self._jobs.get(job_id) is record:
                    del self._jobs[job_id]
            for _ in events:
                self._events.popleft()
            for _ in series:
                self._series.popleft()
        if not self._available:
            log.info("Redis is back; buffered job state written")
        self._available = True
        return True

    # ------------------------------------------------------------------ reads
    def _read(self, fn):
        try:
            return fn()
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis unavailable: {exc}") from exc

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The stored record of ``job_id`` or None."""
        raw = self._read(lambda: self.client.hgetall(keys.job(job_id)))
        return _decode(raw) if raw else None

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every stored job, oldest first."""
        ids = self._read(lambda: self.client.zrange(keys.jobs_index(), 0, -1))
        records = []
        for job_id in ids:
            rec = self.get_job(job_id)
            if rec is not None:
                records.append(rec)
        return records

    def get_series(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Finished series of the job: series id -> summary."""
        raw = self._read(lambda: self.client.hgetall(keys.job_series(job_id)))
        return {name: json.loads(v) for name, v in raw.items()}

    def events(self, job_id: str, count: int = 100) -> list[dict[str, str]]:
        """The job's latest ``count`` events, oldest first."""
        raw = self._read(lambda: self.client.xrevrange(keys.job_events(job_id), count=count))
        return [fields for _id, fields in reversed(raw)]

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def mark_interrupted(self, skip: set[str]) -> list[str]:
        """Mark every job left active by an earlier process as ``interrupted`` (jobs in ``skip`` excepted).

        Returns
        -------
        list of str
            The ids marked.

        Raises
        ------
        StoreUnavailableError
        """
        marked = []
        for rec in self.list_jobs():
            if rec["id"] in skip or rec.get("state") not in ACTIVE_STATES:
                continue
            self.put_job({**rec, "state": "interrupted",
                          "error": "the service stopped while the job was active"})
            self.add_event(rec["id"], "state", state="interrupted", previous=rec.get("state"))
            marked.append(rec["id"])
        return marked
