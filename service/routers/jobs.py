"""``/v1/jobs``: create, list, inspect, stop and delete correction jobs; download bias offset maps.

A ``{job_id}`` that is not 12 lower-case hex digits is answered 404 on every route, like an unknown id.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import FileResponse

from rtnstream.kernels.exceptions import BackendUnavailableError
from rtnstream.service import keys
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
        instance=record.get("instance"),
    )


def _lookup(fn, job_id: str):
    """``fn()``, with a job id that is not 12 hex digits, an unknown job, or Redis away as error envelopes."""
    try:
        if not keys.is_job_id(job_id):
            raise JobNotFoundError(job_id)
        return fn()
    except JobNotFoundError:
        raise ServiceError(404, "not_found", f"job_id: no job with id {job_id!r:.40}", "job_id") from None
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
def list_jobs(manager: ManagerDep,
              limit: Annotated[int, Query(ge=1, le=1000, description="jobs per page")] = 100,
              cursor: Annotated[str | None, Query(max_length=80,
                                                  description="next_cursor of the previous page")] = None
              ) -> JobList:
    """Jobs known to Redis, oldest first, a page at a time, with live figures for the jobs of this process."""
    try:
        records, next_cursor = manager.list(limit, cursor)
    except ValueError as exc:
        raise ServiceError(422, "invalid_request", str(exc), "cursor") from None
    except StoreUnavailableError as exc:
        raise ServiceError(503, "store_unavailable", str(exc)) from None
    return JobList(jobs=[to_status(r) for r in records], next_cursor=next_cursor)


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


@router.delete("/{job_id}", status_code=204, response_class=Response, **_AUTH)
def delete_job(job_id: str, manager: ManagerDep) -> Response:
    """Delete a finished job (stopped, failed or interrupted): its record, events, series and bias offset
    maps (409 while it is active)."""
    try:
        _lookup(lambda: manager.delete(job_id), job_id)
    except JobStateError as exc:
        raise ServiceError(409, "job_active", str(exc), "job_id") from None
    return Response(status_code=204)


@router.get("/{job_id}/bias-offset", response_class=FileResponse,
            responses={200: {"content": {"application/fits": {}},
                             "description": "bias offset map, FITS, (ny, nx) float64, adu"}})
def bias_offset(job_id: str, manager: ManagerDep,
                series: Annotated[str, Query(min_length=1, description="series id")],
                index: Annotated[int | None, Query(ge=1, description="ordinal of the series in the job, to "
                                                   "choose among series of one id (default: the last)")] = None
                ) -> FileResponse:
    """Bias offset map of a finished series (ALGORITHM.md section 5), FITS in adu."""
    try:
        path = _lookup(lambda: manager.bias_offset_path(job_id, series, index), job_id)
    except KeyError:
        raise ServiceError(404, "not_found", f"series: job {job_id} has no finished series {series!r}"
                           + (f" number {index}" if index is not None else ""), "series") from None
    return FileResponse(path, media_type="application/fits", filename=path.name)
