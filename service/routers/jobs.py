"""``/v1/jobs``: create, inspect and stop correction jobs; download bias offset maps."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from rtnstream.kernels.exceptions import BackendUnavailableError
from rtnstream.service.deps import ManagerDep, require_token
from rtnstream.service.errors import ServiceError
from rtnstream.service.jobs import (
    CubeNotFoundError,
    JobNotFoundError,
    JobStateError,
    PresetError,
    PresetNotFoundError,
)
from rtnstream.service.jobstore import StoreUnavailableError
from rtnstream.service.models import ErrorEnvelope, JobCreate, JobCreated, JobList, JobStatus
from rtnstream.service.pipeline import EndpointError

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"],
                   responses={404: {"model": ErrorEnvelope}, 503: {"model": ErrorEnvelope}})
_AUTH = {"dependencies": [Depends(require_token)], "responses": {401: {"model": ErrorEnvelope},
                                                                  409: {"model": ErrorEnvelope}}}


def to_status(record: dict[str, Any]) -> JobStatus:
    """A job record (live or from Redis) as the response model."""
    rates = record.get("rates") or {}
    return JobStatus(
        id=record["id"], state=record["state"], live=record.get("live", False), config=record["config"],
        counters=record.get("counters") or {},
        throughput={k: rates[k] for k in ("fps", "mpix_per_s", "window_s") if k in rates},
        latency_ms={"p50": rates.get("p50_ms"), "p99": rates.get("p99_ms"),
                    "samples": rates.get("samples", 0)},
        latency_from_timestamp_ms={"p50": rates.get("ts_p50_ms"), "p99": rates.get("ts_p99_ms"),
                                   "samples": rates.get("ts_samples", 0)},
        outputs=record.get("outputs"),
        backend=record.get("backend"), device=record.get("device"), endpoints=record.get("endpoints") or {},
        queue_depth=record.get("queue_depth"), series=record.get("series", []), error=record.get("error"),
        created_at=record["created_at"], updated_at=record.get("updated_at"), node=record.get("node"),
    )


def _lookup(fn, job_id: str):
    try:
        return fn()
    except JobNotFoundError:
        raise ServiceError(404, "not_found", f"no job with id {job_id!r}", "job_id") from None
    except StoreUnavailableError as exc:
        raise ServiceError(503, "store_unavailable", str(exc)) from None


@router.post("", status_code=201, response_model=JobCreated, **_AUTH)
def create_job(body: JobCreate, manager: ManagerDep) -> JobCreated:
    """Create a job and start its pipeline (sockets bound, engine ready) for one camera stream; a named
    ``preset`` fills the fields the body leaves out (422 when its frame shape is not the cube's)."""
    try:
        return JobCreated(id=manager.create(body).id)
    except CubeNotFoundError:
        raise ServiceError(404, "not_found", f"cube_id: no cube with id {body.cube_id!r}; upload it first",
                           "cube_id") from None
    except PresetNotFoundError as exc:
        raise ServiceError(404, "not_found", exc.args[0], "preset") from None
    except PresetError as exc:
        if exc.invalid_file:
            raise ServiceError(500, "invalid_preset", str(exc), "preset") from None
        raise ServiceError(422, "preset_mismatch", str(exc), "preset") from None
    except EndpointError as exc:
        if exc.conflict:
            raise ServiceError(409, "endpoint_unavailable", str(exc), exc.field) from None
        raise ServiceError(422, "invalid_endpoint", str(exc), exc.field) from None
    except BackendUnavailableError as exc:
        raise ServiceError(409, "backend_unavailable", f"backend: {exc}", "backend") from None


@router.get("", response_model=JobList)
def list_jobs(manager: ManagerDep) -> JobList:
    """Every job known to Redis, with live figures for the jobs of this process."""
    return JobList(jobs=[to_status(r) for r in manager.list()])


@router.get("/{job_id}", response_model=JobStatus)
def get_job(job_id: str, manager: ManagerDep) -> JobStatus:
    """State, configuration, counters, throughput, latency, backend of a job."""
    return to_status(_lookup(lambda: manager.get(job_id), job_id))


@router.post("/{job_id}/stop", response_model=JobStatus, **_AUTH)
def stop_job(job_id: str, manager: ManagerDep) -> JobStatus:
    """Stop a job after correcting and publishing every frame it received (flushes the open series)."""
    try:
        return to_status(_lookup(lambda: manager.stop(job_id), job_id))
    except JobStateError as exc:
        raise ServiceError(409, "not_running", str(exc), "job_id") from None


@router.get("/{job_id}/bias-offset", response_class=FileResponse,
            responses={200: {"content": {"application/fits": {}},
                             "description": "bias offset map, FITS, (ny, nx) float64, adu"}})
def bias_offset(job_id: str, manager: ManagerDep,
                series: Annotated[str, Query(min_length=1, description="series id")]) -> FileResponse:
    """Bias offset map of a finished series (ALGORITHM.md section 5), FITS in adu."""
    try:
        path = _lookup(lambda: manager.bias_offset_path(job_id, series), job_id)
    except KeyError:
        raise ServiceError(404, "not_found", f"series: job {job_id} has no finished series {series!r}",
                           "series") from None
    return FileResponse(path, media_type="application/fits", filename=path.name)
