"""``/v1/cubes``: upload and inspect RTN calibration cubes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, UploadFile

from rtnstream.service.deps import CubesDep, require_token
from rtnstream.service.errors import ServiceError
from rtnstream.service.models import CubeInfo, ErrorEnvelope

__all__ = ["router"]

router = APIRouter(prefix="/v1/cubes", tags=["cubes"],
                   responses={404: {"model": ErrorEnvelope}, 422: {"model": ErrorEnvelope}})


@router.post("", status_code=201, response_model=CubeInfo, dependencies=[Depends(require_token)],
             responses={401: {"model": ErrorEnvelope}})
def upload_cube(file: Annotated[UploadFile, File(description="RTN calibration file (FITS)")],
                cubes: CubesDep) -> CubeInfo:
    """Upload an RTN cube; it is validated and stored under its content hash."""
    cube = cubes.add(file.file)
    return CubeInfo(**cubes.info(cube.cube_id))


@router.get("/{cube_id}", response_model=CubeInfo)
def get_cube(cube_id: str, cubes: CubesDep) -> CubeInfo:
    """Shape, number of RTN pixels and gain of a stored cube."""
    try:
        return CubeInfo(**cubes.info(cube_id))
    except KeyError:
        raise ServiceError(404, "not_found", f"no cube with id {cube_id!r}", "cube_id") from None
