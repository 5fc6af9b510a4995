"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rtnstream.service.deps import ManagerDep
from rtnstream.service.models import Health

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(manager: ManagerDep) -> JSONResponse:
    """Ready to take jobs: Redis answers (503 otherwise; running jobs go on correcting regardless)."""
    redis_ok = manager.store.ping()
    running = sum(1 for j in manager.local_jobs() if j.pipeline is not None)
    body = Health(status="ready" if redis_ok else "not_ready", redis=redis_ok, jobs_running=running)
    return JSONResponse(body.model_dump(), status_code=200 if redis_ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text exposition of the jobs' counters and gauges."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
