"""Python client of the control plane (HTTP): cubes, jobs, bias offset maps."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from astropy.io import fits

from rtnstream.kernels.exceptions import RTNStreamError

__all__ = ["ServiceError", "ControlClient"]


class ServiceError(RTNStreamError):
    """The service answered with an error envelope (or could not be reached).

    Attributes
    ----------
    status : int or None
        HTTP status (None when the service could not be reached).
    code : str
    field : str or None
        The request field at fault, when the service named one.
    """

    def __init__(self, status: int | None, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})" if status else message)
        self.status, self.code, self.message, self.field = status, code, message, field


class ControlClient:
    """Talk to an rtnstream service.

    Parameters
    ----------
    base_url : str
        e.g. ``http://127.0.0.1:8080``.
    token : str, optional
        Bearer token for mutating calls.
    timeout_s : float
        Timeout of each request, s (stopping a job waits for its frames to be flushed).

    Examples
    --------
    >>> with ControlClient("http://127.0.0.1:8080") as api:  # doctest: +SKIP
    ...     cube = api.upload_cube("cube.fits")
    ...     job = api.create_job("cam1", cube["id"], "tcp://*:5555", "tcp://*:5556")
    ...     api.stop_job(job)
    """

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(None, "unreachable", f"cannot reach {self._http.base_url}: {exc}") from exc
        if r.is_error:
            try:
                err = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise ServiceError(r.status_code, "http_error", r.text[:200] or r.reason_phrase) from None
            raise ServiceError(r.status_code, err.get("code", "error"), err.get("message", ""),
                               err.get("field"))
        return r

    # ------------------------------------------------------------------ cubes
    def upload_cube(self, path: str | os.PathLike) -> dict[str, Any]:
        """Upload an RTN cube FITS file; returns ``{"id", "shape", "n_rtn", "gain_e_per_adu"}``."""
        path = Path(path)
        with path.open("rb") as f:
            return self._call("POST", "/v1/cubes", files={"file": (path.name, f, "application/fits")}).json()

    def get_cube(self, cube_id: str) -> dict[str, Any]:
        """A stored cube's summary."""
        return self._call("GET", f"/v1/cubes/{cube_id}").json()

    # ------------------------------------------------------------------ jobs
    def create_job(self, camera: str, cube_id: str, ingest: str, publish: str, **options: Any) -> str:
        """Create and start a job; ``options``: reference, window, alpha, overload, push, k_var, spatial_size,
        backend, queue_frames. Returns the job id."""
        body = {"camera": camera, "cube_id": cube_id, "ingest": ingest, "publish": publish, **options}
        return self._call("POST", "/v1/jobs", json=body).json()["id"]

    def get_job(self, job_id: str) -> dict[str, Any]:
        """State, config, counters, throughput, latency of a job."""
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job the service knows."""
        return self._call("GET", "/v1/jobs").json()["jobs"]

    def stop_job(self, job_id: str) -> dict[str, Any]:
        """Stop a job after it flushed every frame; returns its final status."""
        return self._call("POST", f"/v1/jobs/{job_id}/stop").json()

    def bias_offset(self, job_id: str, series: str) -> np.ndarray:
        """Bias offset map of a finished series: shape (ny, nx), float64, adu."""
        r = self._call("GET", f"/v1/jobs/{job_id}/bias-offset", params={"series": series})
        with fits.open(io.BytesIO(r.content)) as hdul:
            return np.asarray(hdul[0].data, dtype=np.float64)

    def wait_until(self, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0,
                   interval_s: float = 0.05) -> dict[str, Any]:
        """Poll the job until ``predicate(status)`` holds; returns that status.

        Raises
        ------
        TimeoutError
            ``timeout_s`` passed first (the message carries the last status's counters).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.get_job(job_id)
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id}: condition not met within {timeout_s} s; state "
                                   f"{status['state']}, counters {status['counters']}")
            time.sleep(interval_s)

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """``/healthz``."""
        return self._call("GET", "/healthz").json()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
