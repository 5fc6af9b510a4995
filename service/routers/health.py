"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rtnstream.service.deps import ManagerDep
from rtnstream.service.models import Health, Readiness

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(manager: ManagerDep) -> JSONResponse:
    """Ready to take jobs: Redis answers (503 otherwise; running jobs go on correcting regardless, their state
    writes wait in a buffer: ``pending_writes``, the oldest ``oldest_pending_s`` old)."""
    store = manager.store
    redis_ok = store.ping()
    running = sum(1 for j in manager.local_jobs() if j.pipeline is not None)
    age = store.oldest_pending_s
    body = Readiness(status="ready" if redis_ok else "not_ready", redis=redis_ok, jobs_running=running,
                     pending_writes=store.pending, oldest_pending_s=None if age is None else round(age, 3))
    return JSONResponse(body.model_dump(), status_code=200 if redis_ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text exposition of the jobs' counters and gauges."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
