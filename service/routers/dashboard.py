"""The operator dashboard at ``/`` and the pictures it shows: last corrected frame, where corrections happen,
bias offset maps (PNG).

The page and its script and style sheet are this package's own files (``rtnstream.service.static``): nothing
comes from another host. The page reads the JSON API (``/v1/jobs``, ``/v1/cubes/{id}``, ``/readyz``) once a
second; its stop / start buttons send the token entered in the page as a bearer header.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from astropy.io import fits
from fastapi import APIRouter, Query, Response
from fastapi.responses import HTMLResponse

from rtnstream import __version__
from rtnstream.service.deps import ManagerDep
from rtnstream.service.errors import ServiceError
from rtnstream.service.images import MAX_SIDE, corrections_map, encode_png, frame_preview, offset_map
from rtnstream.service.jobs import JobStateError
from rtnstream.service.models import ErrorEnvelope
from rtnstream.service.pipeline import Pipeline
from rtnstream.service.routers.jobs import _lookup

__all__ = ["router"]

router = APIRouter(tags=["dashboard"])

_STATIC = resources.files("rtnstream.service") / "static"
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_PNG = {200: {"content": {"image/png": {}}, "description": "PNG picture"},
        404: {"model": ErrorEnvelope}, 409: {"model": ErrorEnvelope}}
MaxSide = Annotated[int, Query(ge=16, le=MAX_SIDE, description="longest side of the picture, pixels")]


def _png(pixels) -> Response:
    return Response(encode_png(pixels), media_type="image/png", headers={"Cache-Control": "no-store"})


def _live(manager: ManagerDep, job_id: str) -> Pipeline:
    """The running pipeline of ``job_id`` (404 for an unknown id, 409 ``not_running`` when it does not run)."""
    try:
        return _lookup(lambda: manager.live_pipeline(job_id), job_id)
    except JobStateError as exc:
        raise ServiceError(409, "not_running", str(exc), "job_id") from None


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    """The operator dashboard."""
    page = (_STATIC / "dashboard.html").read_text(encoding="utf-8")
    return HTMLResponse(page.replace("{{version}}", __version__))


@router.get("/dashboard/{asset}", include_in_schema=False)
def dashboard_asset(asset: str) -> Response:
    """The dashboard's script and style sheet."""
    if asset not in _ASSETS:
        raise ServiceError(404, "not_found", f"asset: no dashboard file {asset!r:.40}", "asset")
    return Response((_STATIC / asset).read_bytes(), media_type=_ASSETS[asset])


@router.get("/v1/jobs/{job_id}/preview.png", response_class=Response, responses=_PNG)
def preview(job_id: str, manager: ManagerDep, max_side: MaxSide = 512) -> Response:
    """The last frame the running job published, subsampled to ``max_side`` and stretched to 8-bit grey
    (0.5 to 99.5 percentile); 404 before its first frame, 409 when the job does not run here."""
    frame = _live(manager, job_id).last_frame
    if frame is None:
        raise ServiceError(404, "not_found", f"job_id: job {job_id} has published no frame yet", "job_id")
    return _png(frame_preview(frame, max_side))


@router.get("/v1/jobs/{job_id}/corrections.png", response_class=Response, responses=_PNG)
def corrections(job_id: str, manager: ManagerDep, max_side: MaxSide = 512) -> Response:
    """Where corrections happen in the running job's current series: corrections (low + high) of its RTN
    pixels per block, black (none) to white (most), logarithmic; 409 when the job does not run here."""
    engine = _live(manager, job_id).engine
    counts = engine.backend.counters
    return _png(corrections_map(engine.shape, engine.params.index, counts.n_lo + counts.n_hi, max_side))


@router.get("/v1/jobs/{job_id}/bias-offset.png", response_class=Response, responses=_PNG)
def bias_offset_png(job_id: str, manager: ManagerDep,
                    series: Annotated[str, Query(min_length=1, description="series id")],
                    index: Annotated[int | None, Query(ge=1, description="ordinal of the series in the job "
                                                       "(default: the last of that id)")] = None,
                    max_side: MaxSide = 512) -> Response:
    """The bias offset map of a finished series (``GET .../bias-offset`` as a picture): blue below zero,
    white at zero, red above, full colour at the largest magnitude."""
    try:
        path = _lookup(lambda: manager.bias_offset_path(job_id, series, index), job_id)
    except KeyError:
        raise ServiceError(404, "not_found", f"series: job {job_id} has no finished series {series!r:.80}",
                           "series") from None
    return _png(offset_map(fits.getdata(path), max_side))
