"""Job manager: creates, runs and stops the pipelines of this process and keeps their state in Redis.

A job's live figures live in its :class:`~rtnstream.service.pipeline.Pipeline`; a housekeeping thread
copies them to the :class:`~rtnstream.service.jobstore.JobStore` every ``state_flush_s`` seconds. No call
of this module waits for Redis on a frame's way: every state write is buffered and written by the store's
writer thread, and the end of a series (called from a pipeline's processing thread) only hands the series
to the series writer thread, which writes its bias offset map to disk and only then records the series as
finished (in the job, its counters and Redis).

Each service process has an instance id and keeps a lease on it in Redis (``instance_lease_s``, renewed
by the housekeeping thread). A job left active by a process whose lease expired (a crash) is marked
``interrupted`` by whichever service notices it first; two services sharing a Redis, even with one
``node_id``, never interrupt each other's live jobs. Finished jobs of this ``node_id`` are deleted beyond
``retention_jobs`` or after ``retention_days``. A job may name a camera preset
(``<presets_dir>/<name>.toml``, :func:`load_preset`) whose job defaults fill the fields the request leaves
out.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import zmq
from astropy.io import fits
from pydantic import ValidationError
from pydantic_settings import SettingsError

from rtnstream.service import keys
from rtnstream.service.cubes import CubeStore
from rtnstream.service.curve import CurveServer
from rtnstream.service.jobstore import ACTIVE_STATES, FINISHED_STATES, JobStore, StoreUnavailableError
from rtnstream.service.models import PRESET_NAME_PATTERN, CameraPreset, JobConfig, JobCreate
from rtnstream.service.outputs import OutputBounds
from rtnstream.service.pipeline import Pipeline, PipelineConfig, SeriesResult
from rtnstream.service.settings import ServiceSettings, read_toml

__all__ = ["JobNotFoundError", "JobStateError", "CubeNotFoundError", "PresetNotFoundError", "PresetError",
           "Job", "JobManager", "bias_offset_file", "load_preset", "apply_preset"]

log = logging.getLogger(__name__)

#: Job settings whose default is the service's (``ServiceSettings``) when a request leaves them out.
_SERVICE_DEFAULTS = ("backend", "queue_frames", "output_queue_frames", "output_queue_bytes")


class JobNotFoundError(KeyError):
    """No job with that id, here or in Redis."""


class CubeNotFoundError(KeyError):
    """A job names a cube that was never uploaded."""


class JobStateError(RuntimeError):
    """The job cannot do that in its state (e.g. stop a job no process runs, delete a running job)."""


class PresetNotFoundError(KeyError):
    """A job names a camera preset that the presets folder does not have."""


class PresetError(ValueError):
    """A camera preset that does not fit the job (frame shape), or a preset file that is not valid.

    Attributes
    ----------
    invalid_file : bool
        True when the preset file itself is at fault (a configuration error of the service).
    """

    def __init__(self, message: str, invalid_file: bool = False) -> None:
        super().__init__(message)
        self.invalid_file = invalid_file


def load_preset(presets_dir: Path, name: str) -> CameraPreset:
    """The camera preset ``<presets_dir>/<name>.toml``.

    Raises
    ------
    PresetNotFoundError
        No such file (the message lists the presets there are).
    PresetError
        The file is not valid TOML or not a valid preset (``invalid_file`` set; the message names the key).
    """
    path = Path(presets_dir) / f"{name}.toml"
    if re.match(PRESET_NAME_PATTERN, name) is None or not path.is_file():
        have = sorted(p.stem for p in Path(presets_dir).glob("*.toml")) if Path(presets_dir).is_dir() else []
        raise PresetNotFoundError(f"preset: no camera preset {name!r} in {presets_dir} "
                                  f"(available: {', '.join(have) or 'none'})")
    try:
        preset = CameraPreset(**read_toml(path, f"preset {name!r}"))
    except SettingsError as exc:
        raise PresetError(str(exc), invalid_file=True) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise PresetError(f"preset {name!r} ({path}): {key}: {first['msg']}", invalid_file=True) from None
    if preset.name != name:
        raise PresetError(f"preset {name!r} ({path}): name is {preset.name!r}, it must equal the file name",
                          invalid_file=True)
    return preset


def apply_preset(request: JobCreate, preset: CameraPreset, cube_shape: tuple[int, int]) -> JobCreate:
    """``request`` with the preset's job defaults in the fields it did not set (explicit fields win).

    Parameters
    ----------
    request : JobCreate
    preset : CameraPreset
    cube_shape : (ny, nx)
        Shape of the job's RTN cube, pixels.

    Raises
    ------
    PresetError
        The preset's frame shape differs from the cube's.
    """
    if tuple(preset.shape) != tuple(cube_shape):
        raise PresetError(f"preset: camera preset {preset.name!r} has frames of shape {list(preset.shape)}, "
                          f"the RTN cube {request.cube_id} has {list(cube_shape)}")
    explicit = request.model_dump(include=request.model_fields_set)
    return JobCreate(**{**preset.job.model_dump(exclude_none=True), **explicit})


#: Finished series whose bias offset maps wait for the series writer (each holds a (ny, nx) float64 map);
#: beyond this many the end of a series waits for the disk (never for Redis).
_MAX_PENDING_MAPS = 4


def bias_offset_file(jobs_dir: Path, job_id: str, series: str, index: int | None = None) -> Path:
    """Where the bias offset map of a finished series of job ``job_id`` is kept.

    Parameters
    ----------
    jobs_dir : pathlib.Path
    job_id : str
    series : str
        Series id (URL-quoted in the file name).
    index : int, optional
        The series' 1-based ordinal in the job: ``bias-offset-<index>-<series>.fits``, so a series id used
        twice keeps both maps. Records of earlier versions have none: ``bias-offset-<series>.fits``.

    Raises
    ------
    ValueError
        ``job_id`` is not a job id.
    """
    name = quote(series, safe="")
    stem = f"bias-offset-{name}" if index is None else f"bias-offset-{index:06d}-{name}"
    return Path(jobs_dir) / keys.check_job_id(job_id) / f"{stem}.fits"


def _parse_cursor(cursor: str) -> tuple[float, str]:
    """A page cursor ``<created_at>_<job id>`` as (created_at, id).

    Raises
    ------
    ValueError
        Not a cursor (the message names ``cursor``).
    """
    created, _, job_id = cursor.rpartition("_")
    try:
        position = (float(created), keys.check_job_id(job_id))
    except ValueError:
        raise ValueError(f"cursor: {cursor!r:.60} is not a cursor of GET /v1/jobs (next_cursor)") from None
    return position


@dataclass
class Job:
    """A job this process created.

    Attributes
    ----------
    id : str
    config : JobConfig
    created_at : float
        Unix seconds.
    node : str
        ``node_id`` of the service process that runs it.
    instance : str
        Instance id of that process (its lease in Redis tells whether it is alive).
    state : str
        One of :data:`rtnstream.service.jobstore.JOB_STATES`.
    pipeline : Pipeline or None
        While the job runs.
    final : dict
        The pipeline's last status once it stopped.
    series : list of dict
        Finished series (summaries, in the order they finished) whose bias offset maps are written.
    series_ended : int
        Series the pipeline ended (handed to the series writer).
    maps_failed : int
        Series whose bias offset map could not be written (disk full...): listed with ``bias_offset`` false.
    written : dict or None
        The record the housekeeping last wrote (an unchanged record is not written again).
    pending : set of Future
        Series still with the series writer.
    """

    id: str
    config: JobConfig
    created_at: float
    node: str
    instance: str
    state: str = "created"
    pipeline: Pipeline | None = None
    error: str | None = None
    final: dict[str, Any] = field(default_factory=dict)
    series: list[dict[str, Any]] = field(default_factory=list)
    series_ended: int = 0
    maps_failed: int = 0
    written: dict[str, Any] | None = None
    pending: set[Future] = field(default_factory=set)
    endpoints: dict[str, str | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> dict[str, Any]:
        """The job record: config, state, live (or final) counters and figures, as plain data.

        ``counters.series_finished`` counts the series recorded (bias offset map on disk), so a series is
        never reported finished before its map can be downloaded.
        """
        live = self.pipeline.status() if self.pipeline is not None else self.final
        counters = dict(live.get("counters", {}))
        if "series_finished" in counters:
            counters["series_finished"] = len(self.series)
            counters["bias_maps_failed"] = self.maps_failed
        return {
            "id": self.id, "camera": self.config.camera, "cube_id": self.config.cube_id, "state": self.state,
            "config": self.config.model_dump(), "counters": counters,
            "rates": live.get("rates", {}), "queue_depth": live.get("queue_depth"),
            "outputs": live.get("outputs"),
            "backend": live.get("backend"), "device": live.get("device"), "endpoints": dict(self.endpoints),
            "error": self.error or live.get("error"), "created_at": self.created_at, "node": self.node,
            "instance": self.instance,
        }


class JobManager:
    """The jobs of this service process.

    Parameters
    ----------
    settings : ServiceSettings
    store : JobStore
        Started and closed by the manager.
    cubes : CubeStore
    context : zmq.Context
    curve : CurveServer, optional
        Keys that make every job socket a CURVE server (the context's authenticator admits the clients).

    Attributes
    ----------
    instance : str
        Instance id of this process (12 hex digits), recorded in its jobs and leased in Redis.
    """

    def __init__(self, settings: ServiceSettings, store: JobStore, cubes: CubeStore,
                 context: zmq.Context, curve: CurveServer | None = None) -> None:
        self.settings = settings
        self.store = store
        self.cubes = cubes
        self.context = context
        self.curve = curve
        self.instance = uuid.uuid4().hex[:12]
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._last_sweep = float("-inf")
        self._series_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtn-series-writer")
        self._maps_room = threading.BoundedSemaphore(_MAX_PENDING_MAPS)
        self._housekeeper = threading.Thread(target=self._run_housekeeping, name="rtn-housekeeping",
                                             daemon=True)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the store's writer; take the lease, mark jobs of dead processes interrupted, apply the
        retention (or retry later while Redis is away); start the housekeeping thread."""
        self.store.start()
        self._housekeep()
        self._housekeeper.start()

    def close(self) -> None:
        """Stop every running job in parallel (each flushing its frames), write the final state, release the
        lease, stop the threads."""
        running = [job.id for job in self._jobs.values() if job.pipeline is not None]
        if running:
            with ThreadPoolExecutor(max_workers=len(running), thread_name_prefix="rtn-stop") as pool:
                list(pool.map(self.stop, running))
        self._closing.set()
        if self._housekeeper.ident is not None:
            self._housekeeper.join(5.0)
        self._series_writer.shutdown(wait=True)
        if not self.store.close():
            log.warning("Redis unavailable at shutdown: %d job state writes lost", self.store.pending)
        self.store.release_lease(self.instance)

    def _run_housekeeping(self) -> None:
        while not self._closing.wait(self.settings.state_flush_s):
            self._housekeep()

    def _housekeep(self) -> None:
        """One round: notice dead pipelines, buffer the live records, renew the lease; every third of the
        lease, mark the jobs of dead processes interrupted and apply the retention."""
        for job in list(self._jobs.values()):
            self._watch(job)
            # a job whose lock is held is changing state and writes its own record: skip it this
            # round, so an older snapshot can never overwrite the newer state
            if job.lock.acquire(blocking=False):
                try:
                    record = job.status() if job.pipeline is not None else None
                    if record is not None and record != job.written:  # an idle job writes nothing
                        self.store.put_job(record)
                        job.written = record
                finally:
                    job.lock.release()
        self.store.renew_lease(self.instance, self.settings.node_id, self.settings.instance_lease_s)
        if time.monotonic() - self._last_sweep < self.settings.instance_lease_s / 3:
            return
        try:
            records = self.store.list_jobs()
            self._recover(records)
            self._retain(records)
        except StoreUnavailableError as exc:
            log.debug("interrupted jobs and retention not checked (%s); will retry", exc)
            return
        self._last_sweep = time.monotonic()

    def _recover(self, records: list[dict[str, Any]]) -> None:
        """Mark as interrupted the active jobs of processes whose lease expired (records of earlier versions,
        without an instance, only when they are of this node)."""
        active = [r for r in records if r["id"] not in self._jobs and r.get("state") in ACTIVE_STATES]
        live = self.store.live_instances({r["instance"] for r in active if r.get("instance")})
        node = self.settings.node_id
        gone = [r for r in active
                if (r["instance"] not in live if r.get("instance") else r.get("node", node) == node)]
        marked = self.store.mark_interrupted(gone)
        if marked:
            log.warning("jobs left active by a service process that is gone, now interrupted: %s",
                        ", ".join(marked))

    def _retain(self, records: list[dict[str, Any]]) -> None:
        """Delete this node's finished jobs beyond ``retention_jobs`` (newest kept) or older than
        ``retention_days``."""
        mine = sorted((r for r in records if r.get("node") == self.settings.node_id
                       and r.get("state") in FINISHED_STATES and r["id"] not in self._running_ids()),
                      key=lambda r: (r.get("created_at", 0.0), r["id"]), reverse=True)
        expired = mine[self.settings.retention_jobs:]
        if self.settings.retention_days is not None:
            oldest = time.time() - self.settings.retention_days * 86400
            expired += [r for r in mine[:self.settings.retention_jobs] if r.get("updated_at", 0.0) < oldest]
        for r in expired:
            self._delete(r["id"])
        if expired:
            log.info("retention: deleted %d finished jobs", len(expired))

    def _running_ids(self) -> set[str]:
        return {job.id for job in self._jobs.values() if job.pipeline is not None}

    def _watch(self, job: Job) -> None:
        """Notice a pipeline that died on its own (socket failure): the job becomes ``failed``."""
        p = job.pipeline
        if p is None or p.alive or job.state != "running":
            return
        with job.lock:
            if job.pipeline is not p:
                return
            p.stop(timeout_s=1.0)
            self._retire(job, "failed", p.error or "the pipeline stopped on its own")

    def _set_state(self, job: Job, state: str, **event: Any) -> None:
        previous, job.state = job.state, state
        if previous != state:
            event["previous"] = previous
        self.store.put_job(job.status())
        self.store.add_event(job.id, "state", state=state, **event)
        log.info("job %s: %s", job.id, f"{previous} -> {state}" if previous != state else state)

    def _retire(self, job: Job, state: str, error: str | None = None) -> None:
        wait(list(job.pending))  # the series the pipeline flushed are on disk and recorded
        job.final = job.pipeline.status()
        job.pipeline = None
        job.error = error
        self._set_state(job, state, **({"error": error} if error else {}))

    # ------------------------------------------------------------------ operations
    def create(self, request: JobCreate) -> Job:
        """Create and start a job.

        Raises
        ------
        CubeNotFoundError
            ``request.cube_id`` was never uploaded.
        PresetNotFoundError, PresetError
            ``request.preset`` names no preset, an invalid one, or one whose frame shape is not the cube's.
        EndpointError, BackendUnavailableError
            An endpoint is not allowed or cannot be bound, or the backend cannot run (nothing is recorded).
        """
        if not self.cubes.exists(request.cube_id):
            raise CubeNotFoundError(request.cube_id)
        if request.preset is not None:
            preset = load_preset(self.settings.presets_dir, request.preset)
            request = apply_preset(request, preset, tuple(self.cubes.info(request.cube_id)["shape"]))
        defaults = {name: getattr(self.settings, name) for name in _SERVICE_DEFAULTS}
        config = JobConfig(**{**request.model_dump(exclude=set(_SERVICE_DEFAULTS)), **defaults,
                              **request.model_dump(include=set(_SERVICE_DEFAULTS), exclude_none=True)})
        job = Job(uuid.uuid4().hex[:12], config, time.time(), self.settings.node_id, self.instance)
        pconf = PipelineConfig(ingest=config.ingest, publish=config.publish, push=config.push,
                               engine=request.engine_settings(), backend=config.backend,
                               overload=config.overload, queue_frames=config.queue_frames,
                               output=OutputBounds(config.output_queue_frames, config.output_queue_bytes),
                               camera=config.camera, socket_dir=self.settings.ipc_dir, states=config.states,
                               curve=self.curve,
                               stats_window_s=self.settings.stats_window_s,
                               reject_log_interval_s=self.settings.reject_log_interval_s)
        # built before the job is recorded: a request refused here (endpoint, backend) leaves no job behind
        pipeline = Pipeline(job.id, self.cubes.load(config.cube_id), pconf, self.context,
                            on_series_end=lambda result: self._series_done(job, result))
        with self._lock:
            self._jobs[job.id] = job
        self._set_state(job, "created")
        with job.lock:
            job.pipeline = pipeline
            job.endpoints = pipeline.endpoints
            pipeline.start()
            self._set_state(job, "running", backend=pipeline.engine.backend.name)
        return job

    def stop(self, job_id: str) -> dict[str, Any]:
        """Stop a running job, flushing every frame it holds and writing the bias offset maps of the series
        it flushed; returns its record (stopping twice is a no-op).

        Raises
        ------
        JobNotFoundError
        JobStateError
            The job is not run by this process (another one, or an earlier one that was interrupted).
        """
        job = self._jobs.get(job_id)
        if job is None:
            record = self.get(job_id)
            raise JobStateError(f"job {job_id} is {record['state']} and not run by this service process")
        with job.lock:
            if job.pipeline is not None:
                self._set_state(job, "stopping")
                clean = job.pipeline.stop(self.settings.stop_timeout_s)
                self._retire(job, "stopped" if clean else "failed",
                             None if clean else job.pipeline.error or "frames not flushed within the stop timeout")
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Delete a finished job: its keys in Redis, its bias offset maps, its record in this process.

        Raises
        ------
        JobNotFoundError
        JobStateError
            The job is active (created, running or stopping, here or in another process).
        StoreUnavailableError
            Redis cannot be reached (nothing is deleted).
        """
        record = self.get(job_id)
        if record["live"] or record["state"] in ACTIVE_STATES:
            raise JobStateError(f"job {job_id} is {record['state']}; only a finished job "
                                f"({', '.join(FINISHED_STATES)}) can be deleted")
        self._delete(job_id)

    def _delete(self, job_id: str) -> None:
        self.store.delete_job(job_id)
        with self._lock:
            self._jobs.pop(job_id, None)
        shutil.rmtree(Path(self.settings.jobs_dir) / keys.check_job_id(job_id), ignore_errors=True)

    def get(self, job_id: str) -> dict[str, Any]:
        """The record of ``job_id``: live from this process, else from Redis.

        Raises
        ------
        JobNotFoundError
            No such job, or ``job_id`` is not a job id (12 hex digits).
        StoreUnavailableError
            The job is not local and Redis cannot be reached.
        """
        job = self._jobs.get(job_id)
        if job is not None:
            return self._local(job)
        record = self.store.get_job(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return self._stored(record)

    @staticmethod
    def _local(job: Job) -> dict[str, Any]:
        live = job.pipeline is not None
        return {**job.status(), "live": live, "series": list(job.series),
                "updated_at": time.time() if live else None}  # a running job's figures are as of now

    def _stored(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "live": False, "series": self.store.get_series(record["id"])}

    def list(self, limit: int | None = None, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Jobs in Redis, oldest first, this process's live; only local jobs if Redis is away.

        Parameters
        ----------
        limit : int >= 1, optional
            At most this many (default: all).
        cursor : str, optional
            ``next_cursor`` of the previous page.

        Returns
        -------
        records : list of dict
        next_cursor : str or None
            Cursor of the next page; None on the last one.

        Raises
        ------
        ValueError
            ``cursor`` is not a cursor, or ``limit`` < 1.
        StoreUnavailableError
            Redis is away and a ``cursor`` was given.
        """
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        after = _parse_cursor(cursor) if cursor is not None else None
        try:
            stored = self.store.list_jobs(after, None if limit is None else limit + 1)
        except StoreUnavailableError:
            if after is not None:
                raise
            return [self._local(j) for j in sorted(self._jobs.values(), key=lambda j: j.created_at)], None
        page = stored if limit is None else stored[:limit]
        records = [self._local(self._jobs[r["id"]]) if r["id"] in self._jobs else self._stored(r) for r in page]
        if limit is not None and len(stored) > limit:
            last = page[-1]
            return records, f"{last['created_at']!r}_{last['id']}"
        listed = {r["id"] for r in page}  # jobs of this process not written to Redis yet come last
        records += [self._local(j) for j in sorted(self._jobs.values(), key=lambda j: (j.created_at, j.id))
                    if j.id not in listed and (after is None or (j.created_at, j.id) > after)]
        return records, None

    def local_jobs(self) -> list[Job]:
        """Jobs created by this process."""
        return list(self._jobs.values())

    def live_pipeline(self, job_id: str) -> Pipeline:
        """The pipeline of a job running in this process (for live views: last frame, engine counters).

        Raises
        ------
        JobNotFoundError
        JobStateError
            The job exists but no pipeline of this process runs it.
        StoreUnavailableError
            The job is not local and Redis cannot be reached.
        """
        job = self._jobs.get(job_id)
        pipeline = None if job is None else job.pipeline
        if pipeline is None:
            record = self.get(job_id)
            raise JobStateError(f"job {job_id} is {record['state']} and not running in this service process")
        return pipeline

    def bias_offset_path(self, job_id: str, series: str, index: int | None = None) -> Path:
        """The FITS file of a finished series' bias offset map.

        Parameters
        ----------
        job_id, series : str
        index : int, optional
            The series' ordinal in the job, to choose among series that share an id (default: the last).

        Raises
        ------
        JobNotFoundError
        KeyError
            The job has no finished series of that id (and index), or its map was not written.
        """
        record = self.get(job_id)
        found = [s for s in record["series"] if s["series"] == series and index in (None, s.get("index"))]
        if not found or not found[-1].get("bias_offset", False):
            raise KeyError(series)
        path = bias_offset_file(self.settings.jobs_dir, job_id, series, found[-1].get("index"))
        if not path.is_file():
            raise KeyError(series)
        return path

    # ------------------------------------------------------------------ series results
    def _series_done(self, job: Job, result: SeriesResult) -> None:
        """Hand a finished series to the series writer (called from the job's processing thread: returns at
        once, unless :data:`_MAX_PENDING_MAPS` maps already wait for the disk)."""
        self._maps_room.acquire()
        job.series_ended += 1
        future = self._series_writer.submit(self._record_series, job, result, job.series_ended)
        job.pending.add(future)
        future.add_done_callback(job.pending.discard)

    def _record_series(self, job: Job, result: SeriesResult, index: int) -> None:
        """Write the bias offset map of series number ``index``, then record the series as finished."""
        try:
            written = self._write_bias_offset(job, result, index)
            summary = {"series": result.series, "index": index, "camera": result.camera,
                       "frames": result.frames, "finished_at": time.time(), "bias_offset": written}
            job.series.append(summary)
            self.store.add_series(job.id, index, summary)
            self.store.add_event(job.id, "series_end", series=result.series, index=index, frames=result.frames)
        finally:
            self._maps_room.release()

    def _write_bias_offset(self, job: Job, result: SeriesResult, index: int) -> bool:
        """Write the map as FITS; False (logged) when the disk refuses it."""
        path = bias_offset_file(self.settings.jobs_dir, job.id, result.series, index)
        hdu = fits.PrimaryHDU(result.bias_offset_adu.astype(np.float64, copy=False))  # full frame: 490 MB
        h = hdu.header
        h["BUNIT"] = ("adu", "add to the mean bias before subtracting it")
        h["JOBID"] = (job.id, "rtnstream job")
        h["CAMERA"] = (result.camera, "camera stream")
        h["SERIES"] = (result.series[:68], "series id")
        h["SERIESNO"] = (index, "ordinal of the series in the job")
        h["NFRAMES"] = (result.frames, "frames of the series through the engine")
        h["RTNCUBE"] = (job.config.cube_id, "RTN cube id")
        h["RTNREF"] = (job.config.reference, "reference mode")
        part = path.with_name(f".{path.name}.part")
        try:  # atomically: a full disk leaves no partial map under the map's name
            path.parent.mkdir(parents=True, exist_ok=True)
            hdu.writeto(part, overwrite=True, checksum=True)
            os.replace(part, path)
        except OSError as exc:
            part.unlink(missing_ok=True)
            job.maps_failed += 1
            log.error("job %s: bias offset map of series %r (number %d) not written: %s", job.id,
                      result.series, index, exc)
            return False
        return True
