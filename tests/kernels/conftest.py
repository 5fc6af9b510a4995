"""Shared fixtures of the kernels tests: the default threshold table and small hand-built cubes."""

import numpy as np
import pytest

from rtnstream.kernels.cube import DQ_RTN, RTNCube
from rtnstream.kernels.lut import ThresholdTable, get_table


@pytest.fixture(scope="session")
def table() -> ThresholdTable:
    """The default-grid table for alpha = 0.003 (built once, ~6 s, then read from the disk cache)."""
    return get_table(0.003)


def _make_cube(
    mu_adu,
    delta_e,
    sigma_e,
    gain_e_per_adu: float = 1.0,
    frac_lo=0.05,
    frac_hi=0.05,
    readnoise_e=None,
    meanbias_adu=None,
    table: ThresholdTable | None = None,
) -> RTNCube:
    """A cube whose every pixel has RTN with the given parameters (arrays of one shape, or scalars).

    ``readnoise_e`` defaults to ``2 * sigma_e``; ``meanbias_adu`` to ``mu_adu``; ``lammax_e`` is taken from
    ``table`` when given (else 100 e-), as the engine does not use it.
    """
    mu = np.atleast_2d(np.asarray(mu_adu, dtype=np.float64))
    full = np.ones(mu.shape)
    delta = np.asarray(delta_e, dtype=np.float64) * full
    sigma = np.asarray(sigma_e, dtype=np.float64) * full
    flo = np.asarray(frac_lo, dtype=np.float64) * full
    fhi = np.asarray(frac_hi, dtype=np.float64) * full
    lammax = 100.0 * full if table is None else table.lambda_max(delta.ravel(), sigma.ravel()).reshape(mu.shape)
    return RTNCube.from_planes(
        mu_adu=mu,
        delta_e=delta,
        sigma_e=sigma,
        frac_c=1.0 - flo - fhi,
        frac_lo=flo,
        frac_hi=fhi,
        lammax_e=np.nan_to_num(lammax, nan=0.0),
        meanbias_adu=mu.copy() if meanbias_adu is None else np.asarray(meanbias_adu, np.float64) * full,
        readnoise_e=2.0 * sigma if readnoise_e is None else np.asarray(readnoise_e, np.float64) * full,
        dq=np.full(mu.shape, DQ_RTN, dtype=np.uint16),
        gain_e_per_adu=gain_e_per_adu,
    )


@pytest.fixture(scope="session")
def make_cube():
    """Factory of all-RTN cubes with chosen parameters (see ``_make_cube``)."""
    return _make_cube
