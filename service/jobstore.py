"""Job state in Redis: one hash per job, a capped event stream, finished series; writes that never wait for Redis.

Every write goes through a buffer: :meth:`JobStore.put_job`, :meth:`JobStore.add_event` and
:meth:`JobStore.add_series` only record what to write (the latest record per job, the events and series in
order) and wake the store's writer thread, which writes the buffer in one pipeline and, while Redis is away
or hangs, retries every ``retry_s`` seconds. So no caller, least of all a pipeline's processing thread,
ever waits for Redis. :attr:`JobStore.pending` and :attr:`JobStore.oldest_pending_s` tell how far behind
Redis is. Reads and deletes go to Redis directly and raise :class:`StoreUnavailableError` when it is away.
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

__all__ = ["JOB_STATES", "ACTIVE_STATES", "FINISHED_STATES", "StoreUnavailableError", "JobStore"]

log = logging.getLogger(__name__)

JOB_STATES = ("created", "running", "stopping", "stopped", "failed", "interrupted")
#: States of a job whose pipeline lives in some process; after a restart they become ``interrupted``.
ACTIVE_STATES = ("created", "running", "stopping")
#: States of a job no process runs any more (it may be deleted).
FINISHED_STATES = ("stopped", "failed", "interrupted")
_MAX_PENDING_EVENTS = 10000


class StoreUnavailableError(RuntimeError):
    """Redis cannot be reached (reads and deletes only; writes are buffered)."""


def _encode(record: dict[str, Any]) -> dict[str, str]:
    """Hash fields: every value as JSON (None values left out)."""
    return {k: json.dumps(v) for k, v in record.items() if v is not None}


def _not_newer(error: redis.ResponseError) -> bool:
    """True for XADD's refusal of an entry id not above the stream's last one."""
    return "equal or smaller" in str(error)


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
    retry_s : float > 0
        Pause of the writer thread after a failed write, s.

    Raises
    ------
    ValueError
        ``retry_s`` is not > 0.
    """

    def __init__(self, client: redis.Redis, events_maxlen: int = 1000, retry_s: float = 1.0) -> None:
        if not retry_s > 0:
            raise ValueError(f"retry_s must be > 0, got {retry_s!r}")
        self.client = client
        self.events_maxlen = events_maxlen
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time, so a buffered write goes out once
        self._jobs: dict[str, dict[str, Any]] = {}
        # (job id, event, stream entry id, attempted): a write that timed out may still be done by Redis
        # later, so each event carries its own entry id and a retry that Redis refuses as not newer is the
        # event already written (exactly once); an event refused on its first attempt (another process
        # wrote a newer entry, clocks differ) goes again with an id of Redis's choosing
        self._events: deque[list[Any]] = deque(maxlen=_MAX_PENDING_EVENTS)
        self._last_entry = (0, 0)
        self._series: deque[tuple[str, str, str]] = deque(maxlen=_MAX_PENDING_EVENTS)
        self._since: float | None = None  # monotonic time of the oldest write still buffered
        self._available = True
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._run_writer, name="rtn-redis-writer", daemon=True)

    # ------------------------------------------------------------------ writer thread
    def start(self) -> None:
        """Start the writer thread."""
        self._writer.start()

    def close(self, timeout_s: float = 5.0) -> bool:
        """Stop the writer thread after one last attempt to write the buffer; True when nothing is left.

        Parameters
        ----------
        timeout_s : float
            Longest wait for the writer thread, s.
        """
        self._closing.set()
        self._wake.set()
        if self._writer.ident is not None:
            self._writer.join(timeout_s)
        return self.flush()

    def _run_writer(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            self._wake.clear()
            if not self.flush():  # something is left: written while this flush ran, or Redis is away
                self._wake.set()
                if not self._available:  # try again after the pause (or at once when closing)
                    self._closing.wait(self.retry_s)

    # ------------------------------------------------------------------ writes (buffered, never blocking)
    def _buffered(self) -> None:
        """Note that something was buffered (caller holds ``_lock``) and wake the writer."""
        if self._since is None:
            self._since = time.monotonic()
        self._wake.set()

    def _append(self, buffer: deque, item: Any, what: str) -> None:
        """Buffer ``item`` (caller holds ``_lock``); a full buffer drops its oldest item, with a warning."""
        if len(buffer) == buffer.maxlen:
            log.warning("%d job %s waiting for Redis: the oldest is dropped", len(buffer), what)
        buffer.append(item)
        self._buffered()

    def put_job(self, record: dict[str, Any]) -> None:
        """Write (or overwrite) the hash of job ``record['id']`` (buffered).

        Raises
        ------
        ValueError
            ``record['id']`` is not a job id.
        """
        keys.check_job_id(record["id"])
        record = {**record, "updated_at": time.time()}
        with self._lock:
            self._jobs[record["id"]] = record
            self._buffered()

    def add_event(self, job_id: str, kind: str, **fields: Any) -> None:
        """Append an event (``kind`` and string fields) to the job's capped stream (buffered).

        Raises
        ------
        ValueError
            ``job_id`` is not a job id.
        """
        keys.check_job_id(job_id)
        event = {"kind": kind, "time": f"{time.time():.3f}", **{k: str(v) for k, v in fields.items()}}
        with self._lock:
            self._append(self._events, [job_id, event, self._entry_id(), False], "events")

    def _entry_id(self) -> str:
        """A stream entry id ``<ms>-<n>`` above every one this store made (caller holds ``_lock``)."""
        ms, n = self._last_entry
        now = int(time.time() * 1000)
        self._last_entry = (now, 0) if now > ms else (ms, n + 1)
        return "{}-{}".format(*self._last_entry)

    def add_series(self, job_id: str, index: int, summary: dict[str, Any]) -> None:
        """Record finished series number ``index`` (1-based, in the job) with its summary (buffered).

        Raises
        ------
        ValueError
            ``job_id`` is not a job id.
        """
        keys.check_job_id(job_id)
        with self._lock:
            self._append(self._series, (job_id, str(index), json.dumps(summary)), "series")

    @property
    def pending(self) -> int:
        """Writes waiting for Redis."""
        with self._lock:
            return len(self._jobs) + len(self._events) + len(self._series)

    @property
    def oldest_pending_s(self) -> float | None:
        """Age of the oldest write waiting for Redis, s (None when nothing waits)."""
        with self._lock:
            return None if self._since is None else time.monotonic() - self._since

    def flush(self) -> bool:
        """Write everything buffered now (in the caller's thread); True when nothing is left."""
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            jobs, events, series = dict(self._jobs), list(self._events), list(self._series)
            started = time.monotonic()
        if not (jobs or events or series):
            return True
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id, record in jobs.items():
                pipe.hset(keys.job(job_id), mapping=_encode(record))
                pipe.zadd(keys.jobs_index(), {job_id: float(record.get("created_at", time.time()))}, nx=True)
            for job_id, event, entry, _attempted in events:
                pipe.xadd(keys.job_events(job_id), event, id=entry, maxlen=self.events_maxlen, approximate=True)
            for job_id, index, summary in series:
                pipe.hset(keys.job_series(job_id), index, summary)
            first = [not ev[3] for ev in events]
            for ev in events:
                ev[3] = True
            replies = pipe.execute(raise_on_error=False)  # connection errors and timeouts still raise
        except redis.RedisError as exc:
            if self._available:
                log.warning("Redis unavailable (%s); job state is buffered and written when it returns", exc)
            self._available = False
            return False
        refused = [r for r in replies if isinstance(r, redis.ResponseError) and not _not_newer(r)]
        if refused:  # e.g. MISCONF (its disk is full) or OOM: Redis is there but keeps nothing; as an outage
            if self._available:
                log.warning("Redis refused the job state writes (%s); they are buffered and written when it "
                            "accepts them", refused[0])
            self._available = False
            return False
        retry = self._refused(replies[2 * len(jobs):2 * len(jobs) + len(events)], events, first)
        with self._lock:
            for job_id, record in jobs.items():
                if self._jobs.get(job_id) is record:
                    del self._jobs[job_id]
            for _ in events:
                self._events.popleft()
            self._events.extendleft(reversed(retry))
            for _ in series:
                self._series.popleft()
            left = bool(self._jobs or self._events or self._series)
            self._since = started if left else None  # what is left was buffered during this write
        if not self._available:
            log.info("Redis is back; buffered job state written")
        self._available = True
        return not left

    @staticmethod
    def _refused(replies: list[Any], events: list[list[Any]], first: list[bool]) -> list[list[Any]]:
        """Events to send again: those Redis refused as not newer on their first attempt, now with an id
        of Redis's choosing. A retry refused so was written by an earlier attempt that timed out."""
        again = []
        for reply, ev, first_try in zip(replies, events, first, strict=True):
            if isinstance(reply, redis.ResponseError) and first_try:
                ev[2] = "*"
                again.append(ev)
        return again

    # ------------------------------------------------------------------ reads and deletes (direct)
    def _read(self, fn):
        try:
            return fn()
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis unavailable: {exc}") from exc

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The stored record of ``job_id``, or None (also for a string that is no job id)."""
        if not keys.is_job_id(job_id):
            return None
        raw = self._read(lambda: self.client.hgetall(keys.job(job_id)))
        return _decode(raw) if raw else None

    def list_jobs(self, after: tuple[float, str] | None = None, limit: int | None = None
                  ) -> list[dict[str, Any]]:
        """Stored jobs, oldest first (by ``created_at``, then id).

        Parameters
        ----------
        after : (float, str), optional
            Only jobs after this (``created_at``, id) position (a page cursor).
        limit : int >= 1, optional
            At most this many.
        """
        def read() -> list[dict[str, Any]]:
            pipe = self.client.pipeline(transaction=False)
            for job_id in filter(keys.is_job_id, self._ids_after(after, limit)):
                pipe.hgetall(keys.job(job_id))
            return [_decode(raw) for raw in pipe.execute() if raw]

        return self._read(read)

    def _ids_after(self, after: tuple[float, str] | None, limit: int | None) -> list[str]:
        if limit is None and after is None:
            return self.client.zrange(keys.jobs_index(), 0, -1)
        low = "-inf" if after is None else after[0]
        ids: list[str] = []
        offset, chunk = 0, (limit or 1000) + 1
        while limit is None or len(ids) < limit:
            got = self.client.zrangebyscore(keys.jobs_index(), low, "+inf", start=offset, num=chunk,
                                            withscores=True)
            ids += [i for i, score in got if after is None or (score, i) > after]
            if len(got) < chunk:
                break
            offset += len(got)
        return ids if limit is None else ids[:limit]

    def get_series(self, job_id: str) -> list[dict[str, Any]]:
        """Finished series of the job, in the order they finished (empty for a string that is no job id)."""
        if not keys.is_job_id(job_id):
            return []
        raw = self._read(lambda: self.client.hgetall(keys.job_series(job_id)))
        return sorted((json.loads(v) for v in raw.values()),
                      key=lambda s: (s.get("index") or 0, s.get("finished_at", 0.0)))

    def events(self, job_id: str, count: int = 100) -> list[dict[str, str]]:
        """The job's latest ``count`` events, oldest first (empty for a string that is no job id)."""
        if not keys.is_job_id(job_id):
            return []
        raw = self._read(lambda: self.client.xrevrange(keys.job_events(job_id), count=count))
        return [fields for _id, fields in reversed(raw)]

    def delete_job(self, job_id: str) -> None:
        """Remove the job's hash, events, series and index entry from Redis, and its buffered writes.

        Raises
        ------
        ValueError
            ``job_id`` is not a job id.
        StoreUnavailableError
            Redis cannot be reached (nothing is removed).
        """
        keys.check_job_id(job_id)
        with self._flush_lock:  # no buffered write of this job can go out after the delete
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(keys.job(job_id), keys.job_events(job_id), keys.job_series(job_id))
            pipe.zrem(keys.jobs_index(), job_id)
            self._read(pipe.execute)
            with self._lock:
                self._jobs.pop(job_id, None)
                for name in ("_events", "_series"):
                    kept = [w for w in getattr(self, name) if w[0] != job_id]
                    getattr(self, name).clear()
                    getattr(self, name).extend(kept)

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    # ------------------------------------------------------------------ instance leases
    def renew_lease(self, instance_id: str, node_id: str, ttl_s: float) -> bool:
        """Keep the lease of service process ``instance_id`` alive for ``ttl_s`` more seconds; False when
        Redis did not take it."""
        try:
            return bool(self.client.set(keys.instance(instance_id), node_id, px=max(1, int(ttl_s * 1000))))
        except redis.RedisError:
            return False

    def release_lease(self, instance_id: str) -> None:
        """End the lease of ``instance_id`` (at a clean shutdown; best effort)."""
        try:
            self.client.delete(keys.instance(instance_id))
        except redis.RedisError as exc:
            log.warning("could not release the lease of this service process: %s", exc)

    def live_instances(self, instance_ids: set[str]) -> set[str]:
        """Which of ``instance_ids`` hold a lease now.

        Raises
        ------
        StoreUnavailableError
        """
        ids = sorted(i for i in instance_ids if keys.is_job_id(i))
        if not ids:
            return set()
        values = self._read(lambda: self.client.mget([keys.instance(i) for i in ids]))
        return {i for i, v in zip(ids, values, strict=True) if v is not None}

    def mark_interrupted(self, records: list[dict[str, Any]]) -> list[str]:
        """Mark the jobs of ``records`` (read from Redis, left active by a process that is gone) as
        ``interrupted``; returns their ids."""
        for rec in records:
            self.put_job({**rec, "state": "interrupted", "error": "the service stopped while the job was active"})
            self.add_event(rec["id"], "state", state="interrupted", previous=rec.get("state"))
        return [rec["id"] for rec in records]
