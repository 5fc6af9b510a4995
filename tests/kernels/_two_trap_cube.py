"""A cube with two-trap pixels for the tests: a one-trap cube with a second trap given to some RTN pixels."""

from __future__ import annotations

import numpy as np

from rtnstream.kernels.cube import DQ_TWO_TRAP, RTNCube, RTNPixels
from rtnstream.kernels.lut import get_table


def with_second_traps(cube: RTNCube, every: int = 5, seed: int = 0) -> RTNCube:
    """``cube`` with a second trap at every ``every``-th RTN pixel: ``D2`` 0.3-0.7 of ``D``, side fractions
    0.02-0.1, ``LAMMAX2`` the threshold table's lambda_max of ``min(D2, D - D2)``, and ``DQ_TWO_TRAP``."""
    rng = np.random.default_rng(seed)
    r = cube.rtn
    two = np.zeros(r.n, dtype=bool)
    two[::every] = True
    d2 = np.where(two, r.delta_e * rng.uniform(0.3, 0.7, r.n), 0.0)
    lo = np.where(two, rng.uniform(0.02, 0.1, r.n), 0.0).astype(np.float32).astype(np.float64)
    hi = np.where(two, rng.uniform(0.02, 0.1, r.n), 0.0).astype(np.float32).astype(np.float64)
    c = np.where(two, 1.0 - lo - hi, 0.0)
    lammax2 = np.zeros(r.n)
    lammax2[two] = get_table(0.003).lambda_max(np.minimum(d2, r.delta_e - d2)[two], r.sigma_e[two])
    rtn = RTNPixels(r.index, r.mu_adu, r.delta_e, r.sigma_e, r.frac_c, r.frac_lo, r.frac_hi, r.lammax_e,
                    delta2_e=d2, frac2_c=c, frac2_lo=lo, frac2_hi=hi, lammax2_e=lammax2)
    dq = cube.dq.copy()
    dq.reshape(-1)[r.index[two]] |= DQ_TWO_TRAP
    return RTNCube(shape=cube.shape, rtn=rtn, meanbias_adu=cube.meanbias_adu.copy(),
                   readnoise_e=cube.readnoise_e.copy(), dq=dq, gain_e_per_adu=cube.gain_e_per_adu,
                   meta=dict(cube.meta))
