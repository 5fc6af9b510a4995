"""``/v1/cubes``: upload and inspect RTN calibration cubes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from rtnstream.service.deps import CubesDep, SettingsDep, require_token
from rtnstream.service.errors import ServiceError
from rtnstream.service.models import CubeInfo, ErrorEnvelope
from rtnstream.service.uploads import receive_upload, upload_openapi

__all__ = ["router"]

router = APIRouter(prefix="/v1/cubes", tags=["cubes"],
                   responses={404: {"model": ErrorEnvelope}, 422: {"model": ErrorEnvelope}})


@router.post("", status_code=201, response_model=CubeInfo, dependencies=[Depends(require_token)],
             responses={401: {"model": ErrorEnvelope}, 413: {"model": ErrorEnvelope},
                        415: {"model": ErrorEnvelope}},
             openapi_extra=upload_openapi("RTN calibration file (FITS)"))
async def upload_cube(request: Request, cubes: CubesDep, settings: SettingsDep) -> CubeInfo:
    """Upload an RTN cube, as the multipart field ``file`` or as a raw ``application/fits`` body; it is
    validated and stored under its content hash. The token is checked before the body is read; a body over
    the service's ``max_upload_bytes`` is answered 413 (before it is read when ``Content-Length`` tells)."""
    target = await run_in_threadpool(cubes.upload_path)
    name = await receive_upload(request, target, settings.max_upload_bytes, settings.body_idle_timeout_s)
    cube = await run_in_threadpool(cubes.add_file, target, name)
    return CubeInfo(**await run_in_threadpool(cubes.info, cube.cube_id))


@router.get("/{cube_id}", response_model=CubeInfo)
def get_cube(cube_id: str, cubes: CubesDep) -> CubeInfo:
    """Shape, number of RTN pixels and gain of a stored cube."""
    try:
        return CubeInfo(**cubes.info(cube_id))
    except KeyError:
        raise ServiceError(404, "not_found", f"no cube with id {cube_id!r}", "cube_id") from None
