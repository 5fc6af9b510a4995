"""Job manager: creates, runs and stops the pipelines of this process and keeps their state in Redis.

A job's live figures live in its :class:`~rtnstream.service.pipeline.Pipeline`; a writer thread copies
them to Redis every ``state_flush_s`` seconds (best effort: :class:`~rtnstream.service.jobstore.JobStore`
buffers what fails and catches up when Redis returns). Jobs of other or earlier processes are read from
Redis; at start-up the ones an earlier process left active are marked ``interrupted``. A job may name a
camera preset (``<presets_dir>/<name>.toml``, :func:`load_preset`) whose job defaults fill the fields the
request leaves out.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import zmq
from astropy.io import fits
from pydantic import ValidationError
from pydantic_settings import SettingsError

from rtnstream.service.cubes import CubeStore
from rtnstream.service.curve import CurveServer
from rtnstream.service.jobstore import JobStore, StoreUnavailableError
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
    """The job cannot do that in its state (e.g. stop a job no process runs)."""


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


def bias_offset_file(jobs_dir: Path, job_id: str, series: str) -> Path:
    """Where the bias offset map of ``series`` of job ``job_id`` is kept (series id URL-quoted)."""
    return Path(jobs_dir) / job_id / f"bias-offset-{quote(series, safe='')}.fits"


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
    state : str
        One of :data:`rtnstream.service.jobstore.JOB_STATES`.
    pipeline : Pipeline or None
        While the job runs.
    final : dict
        The pipeline's last status once it stopped.
    series : dict
        Finished series: id -> summary.
    """

    id: str
    config: JobConfig
    created_at: float
    node: str
    state: str = "created"
    pipeline: Pipeline | None = None
    error: str | None = None
    final: dict[str, Any] = field(default_factory=dict)
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, str | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> dict[str, Any]:
        """The job record: config, state, live (or final) counters and figures, as plain data."""
        live = self.pipeline.status() if self.pipeline is not None else self.final
        return {
            "id": self.id, "camera": self.config.camera, "cube_id": self.config.cube_id, "state": self.state,
            "config": self.config.model_dump(), "counters": live.get("counters", {}),
            "rates": live.get("rates", {}), "queue_depth": live.get("queue_depth"),
            "outputs": live.get("outputs"),
            "backend": live.get("backend"), "device": live.get("device"), "endpoints": dict(self.endpoints),
            "error": self.error or live.get("error"), "created_at": self.created_at, "node": self.node,
        }


class JobManager:
    """The jobs of this service process.

    Parameters
    ----------
    settings : ServiceSettings
    store : JobStore
    cubes : CubeStore
    context : zmq.Context
    curve : CurveServer, optional
        Keys that make every job socket a CURVE server (the context's authenticator admits the clients).
    """

    def __init__(self, settings: ServiceSettings, store: JobStore, cubes: CubeStore,
                 context: zmq.Context, curve: CurveServer | None = None) -> None:
        self.settings = settings
        self.store = store
        self.cubes = cubes
        self.context = context
        self.curve = curve
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._recovered = False
        self._writer = threading.Thread(target=self._run_writer, name="rtn-state-writer", daemon=True)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Mark jobs left active by an earlier process as interrupted; start the state writer."""
        self._recover()
        self._writer.start()

    def close(self) -> None:
        """Stop every running job (flushing its frames), write the final state, stop the writer."""
        for job in list(self._jobs.values()):
            if job.pipeline is not None:
                self.stop(job.id)
        self._closing.set()
        if self._writer.ident is not None:
            self._writer.join(5.0)
        if not self.store.flush():
            log.warning("Redis unavailable at shutdown: %d job state writes lost", self.store.pending)

    def _recover(self) -> None:
        """Mark as interrupted the jobs an earlier process of this node left active (records without a node
        are taken as this node's); other nodes' jobs are theirs to recover."""
        node = self.settings.node_id
        try:
            others = {r["id"] for r in self.store.list_jobs() if r.get("node", node) != node}
            marked = self.store.mark_interrupted(skip=set(self._jobs) | others)
        except StoreUnavailableError as exc:
            log.warning("cannot check for interrupted jobs yet (%s); will retry", exc)
            return
        self._recovered = True
        if marked:
            log.warning("jobs left active by an earlier service process, now interrupted: %s",
                        ", ".join(marked))

    def _run_writer(self) -> None:
        while not self._closing.wait(self.settings.state_flush_s):
            if not self._recovered:
                self._recover()
            for job in list(self._jobs.values()):
                self._watch(job)
                # a job whose lock is held is changing state and writes its own record: skip it this
                # round, so an older snapshot can never overwrite the newer state
                if job.lock.acquire(blocking=False):
                    try:
                        if job.pipeline is not None:
                            self.store.put_job(job.status())
                    finally:
                        job.lock.release()
            self.store.flush()

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
        job = Job(uuid.uuid4().hex[:12], config, time.time(), self.settings.node_id)
        pconf = PipelineConfig(ingest=config.ingest, publish=config.publish, push=config.push,
                               engine=request.engine_settings(), backend=config.backend,
                               overload=config.overload, queue_frames=config.queue_frames,
                               output=OutputBounds(config.output_queue_frames, config.output_queue_bytes),
                               camera=config.camera, socket_dir=self.settings.ipc_dir, curve=self.curve,
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
        """Stop a running job, flushing every frame it holds; returns its record (stopping twice is a no-op).

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

    def get(self, job_id: str) -> dict[str, Any]:
        """The record of ``job_id``: live from this process, else from Redis.

        Raises
        ------
        JobNotFoundError
        StoreUnavailableError
            The job is not local and Redis cannot be reached.
        """
        job = self._jobs.get(job_id)
        if job is not None:
            return {**job.status(), "live": job.pipeline is not None, "series": list(job.series.values())}
        record = self.store.get_job(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return {**record, "live": False, "series": list(self.store.get_series(job_id).values())}

    def list(self) -> list[dict[str, Any]]:
        """Every job in Redis (oldest first), this process's jobs live; only local jobs if Redis is away."""
        try:
            ids = [r["id"] for r in self.store.list_jobs()]
        except StoreUnavailableError:
            ids = []
        ids += [i for i in self._jobs if i not in ids]
        return [self.get(i) for i in ids]

    def local_jobs(self) -> list[Job]:
        """Jobs created by this process."""
        return list(self._jobs.values())

    def bias_offset_path(self, job_id: str, series: str) -> Path:
        """The FITS file of a finished series' bias offset map.

        Raises
        ------
        JobNotFoundError
        KeyError
            The job has no finished series of that id.
        """
        record = self.get(job_id)
        if not any(s["series"] == series for s in record["series"]):
            raise KeyError(series)
        path = bias_offset_file(self.settings.jobs_dir, job_id, series)
        if not path.is_file():
            raise KeyError(series)
        return path

    # ------------------------------------------------------------------ series results
    def _series_done(self, job: Job, result: SeriesResult) -> None:
        """Keep the bias offset map of a finished series (called from the job's processing thread)."""
        path = bias_offset_file(self.settings.jobs_dir, job.id, result.series)
        path.parent.mkdir(parents=True, exist_ok=True)
        hdu = fits.PrimaryHDU(result.bias_offset_adu.astype(np.float64))
        h = hdu.header
        h["BUNIT"] = ("adu", "add to the mean bias before subtracting it")
        h["JOBID"] = (job.id, "rtnstream job")
        h["CAMERA"] = (result.camera, "camera stream")
        h["SERIES"] = (result.series[:68], "series id")
        h["NFRAMES"] = (result.frames, "frames of the series through the engine")
        h["RTNCUBE"] = (job.config.cube_id, "RTN cube id")
        h["RTNREF"] = (job.config.reference, "reference mode")
        hdu.writeto(path, overwrite=True, checksum=True)
        summary = {"series": result.series, "camera": result.camera, "frames": result.frames,
                   "finished_at": time.time(), "bias_offset": True}
        job.series[result.series] = summary
        self.store.add_series(job.id, result.series, summary)
        self.store.add_event(job.id, "series_end", series=result.series, frames=result.frames)
