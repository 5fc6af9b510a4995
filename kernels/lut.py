"""Threshold table: quantiles of Poisson(lambda) convolved with N(0, sigma^2), tabulated and interpolated.

The jump decision (ALGORITHM.md section 3) needs, for every RTN pixel and frame, the two quantiles
``q_lo = F^-1(alpha/2)`` and ``q_hi = F^-1(1 - alpha/2)`` of

    F(y; lambda, sigma) = sum_n Pois(n; lambda) Phi((y - n) / sigma)        (electron)

They are tabulated once on a rectilinear grid (lambda nodes fine near 0, where the upper quantile moves
fastest, and at 0.025 e- spacing above; sigma nodes log-spaced over 0.2-20 e-) and interpolated bilinearly.
The lookup is written as a fixed sequence of IEEE float64 operations (binary search, one division, products
and sums, no transcendental function) so that the CUDA kernels reproduce it bit for bit; the sigma
coordinate of a pixel is constant for a job and is computed once, on the host, by :meth:`ThresholdTable.sigma_coords`.

Tables are data: saved as ``.npz`` (alpha, grids, quantiles, format version), never pickled, cached in
memory and under ``$RTNSTREAM_CACHE`` (default ``~/.cache/rtnstream``), keyed by the exact ``alpha``.
SciPy is imported by the functions that compute a table only: reading one and the lookup need NumPy alone.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ThresholdTable",
    "build_table",
    "get_table",
    "table_cache_path",
    "clear_table_cache",
    "default_lambda_nodes",
    "default_sigma_nodes",
    "poisson_normal_cdf",
    "poisson_normal_quantile",
]

log = logging.getLogger(__name__)

TABLE_FORMAT_VERSION = 1
LAMBDA_TOP_E = 100.0
SIGMA_MIN_E = 0.2
SIGMA_MAX_E = 20.0
_GUIDE_BUCKETS = 1 << 14


@functools.lru_cache(maxsize=16)
def constant_row(value: float, n: int) -> np.ndarray:
    """A read-only float64 array of ``n`` copies of ``value``, made once per (value, n).

    An operand for the element-wise minimum / maximum: NumPy runs ``np.fmin(a, row)`` about three times as
    fast as ``np.fmin(a, value)`` (the same results).
    """
    row = np.full(n, float(value))
    row.flags.writeable = False
    return row


def default_lambda_nodes(lambda_top_e: float = LAMBDA_TOP_E) -> np.ndarray:
    """Lambda grid (electron): quadratic spacing on [0, 1] (400 steps), then 0.025 e- steps to the top.

    Returns
    -------
    numpy.ndarray, shape (n_lam,), float64, strictly increasing, first 0 and last ``lambda_top_e``.
    """
    if not lambda_top_e >= 100.0:
        raise ValueError(f"lambda_top_e must be >= 100 electron, got {lambda_top_e!r}")
    fine = (np.arange(401) / 400.0) ** 2
    n_coarse = int(np.ceil((lambda_top_e - 1.0) / 0.025))
    coarse = 1.0 + (lambda_top_e - 1.0) * np.arange(1, n_coarse + 1) / n_coarse
    nodes = np.concatenate([fine, coarse])
    nodes[-1] = lambda_top_e
    return nodes


def default_sigma_nodes(sigma_min_e: float = SIGMA_MIN_E, sigma_max_e: float = SIGMA_MAX_E) -> np.ndarray:
    """Sigma grid (electron): log-spaced, about 0.045 in ln(sigma) between nodes.

    Returns
    -------
    numpy.ndarray, shape (n_sig,), float64, strictly increasing from ``sigma_min_e`` to ``sigma_max_e``.
    """
    if not 0 < sigma_min_e < sigma_max_e:
        raise ValueError(f"need 0 < sigma_min_e < sigma_max_e, got {sigma_min_e!r}, {sigma_max_e!r}")
    n = int(np.ceil(np.log(sigma_max_e / sigma_min_e) / 0.045)) + 1
    nodes = np.exp(np.linspace(np.log(sigma_min_e), np.log(sigma_max_e), n))
    nodes[0], nodes[-1] = sigma_min_e, sigma_max_e
    return nodes


# --------------------------------------------------------------------------------------------------
# Direct evaluation of F and its inverse (used to build the table, and by tests as the reference)
# --------------------------------------------------------------------------------------------------


def _poisson_pmf(n: np.ndarray, lam: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln, xlogy

    return np.exp(xlogy(n, lam) - lam - gammaln(n + 1.0))


def poisson_normal_cdf(y, lam, sigma) -> np.ndarray:
    """F(y; lambda, sigma) by summing every Poisson term that matters (reference implementation).

    Parameters
    ----------
    y, lam, sigma : array_like (broadcast together), electron
        Signal, Poisson mean (>= 0) and Gaussian read noise (> 0).

    Returns
    -------
    numpy.ndarray, float64, in [0, 1].
    """
    from scipy.special import ndtr

    y, lam, sigma = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (y, lam, sigma)))
    n_max = int(np.ceil(np.max(lam) + 15 * np.sqrt(np.max(lam)) + 30))
    n = np.arange(n_max + 1, dtype=np.float64)
    pmf = _poisson_pmf(n, lam[..., None])
    return np.sum(pmf * ndtr((y[..., None] - n) / sigma[..., None]), axis=-1)


def poisson_normal_quantile(p, lam, sigma, iterations: int = 80) -> np.ndarray:
    """F^-1(p; lambda, sigma) by bisection on :func:`poisson_normal_cdf` (slow, exact reference).

    Parameters
    ----------
    p : array_like, in (0, 1)
    lam, sigma : array_like, electron
    iterations : int
        Bisection steps; 80 brings the bracket below 1e-20 e-, i.e. to float64 resolution.

    Returns
    -------
    numpy.ndarray, float64, electron.
    """
    p, lam, sigma = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (p, lam, sigma)))
    lo = -12.0 * sigma - 1.0
    hi = lam + 15.0 * np.sqrt(lam) + 12.0 * sigma + 30.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = poisson_normal_cdf(mid, lam, sigma) < p
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _column_quantiles(p: float, lam: np.ndarray, sigma: float) -> np.ndarray:
    """Quantile F^-1(p) for many lambdas at one sigma: safeguarded Newton on a window of Poisson terms.

    Only terms with |y - n| < 8.5 sigma contribute a non-constant Phi; those further below add their whole
    probability, given by the Poisson CDF ``pdtr``.
    """
    from scipy.special import ndtr, ndtri, pdtr

    half = int(np.ceil(8.5 * sigma)) + 1
    k = np.arange(2 * half + 2, dtype=np.float64)
    lo = np.full_like(lam, -12.0 * sigma - 1.0)
    hi = lam + 15.0 * np.sqrt(lam) + 12.0 * sigma + 30.0
    y = np.clip(lam + ndtri(p) * np.sqrt(lam + sigma**2), lo, hi)
    done = np.zeros(lam.shape, dtype=bool)
    for _ in range(100):
        idx = np.flatnonzero(~done)
        if idx.size == 0:
            break
        yi, li = y[idx], lam[idx]
        base = np.maximum(0.0, np.floor(yi) - half)
        n = base[:, None] + k
        pmf = _poisson_pmf(n, li[:, None])
        z = (yi[:, None] - n) / sigma
        below = np.where(base > 0, pdtr(base - 1.0, li), 0.0)
        cdf = below + np.sum(pmf * ndtr(z), axis=1)
        pdf = np.sum(pmf * np.exp(-0.5 * z * z), axis=1) / (sigma * np.sqrt(2.0 * np.pi))
        g = cdf - p
        lo[idx] = np.where(g < 0, yi, lo[idx])
        hi[idx] = np.where(g < 0, hi[idx], yi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = yi - g / pdf
        bad = ~np.isfinite(step) | (step <= lo[idx]) | (step >= hi[idx])
        new = np.where(bad, 0.5 * (lo[idx] + hi[idx]), step)
        converged = (np.abs(g) < 1e-14) | (np.abs(new - yi) < 1e-11) | (hi[idx] - lo[idx] < 1e-11)
        y[idx] = np.where(converged, yi, new)
        done[idx] = converged
    return y


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ThresholdTable:
    """Tabulated quantiles ``q_lo``, ``q_hi`` (electron) on a (lambda, sigma) grid for one ``alpha``.

    Attributes
    ----------
    alpha : float in (0, 1)
        Two-sided significance; ``q_lo = F^-1(alpha/2)``, ``q_hi = F^-1(1 - alpha/2)``.
    lambda_nodes : numpy.ndarray, shape (n_lam,), float64, electron
    sigma_nodes : numpy.ndarray, shape (n_sig,), float64, electron
    q_lo, q_hi : numpy.ndarray, shape (n_lam, n_sig), float64, electron
    """

    alpha: float
    lambda_nodes: np.ndarray
    sigma_nodes: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray

    def __post_init__(self) -> None:
        shape = (self.lambda_nodes.size, self.sigma_nodes.size)
        for name in ("q_lo", "q_hi"):
            arr = getattr(self, name)
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape} from the grids")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} holds non-finite values")
        for name in ("lambda_nodes", "sigma_nodes"):
            nodes = getattr(self, name)
            if nodes.ndim != 1 or nodes.size < 2 or not np.all(np.diff(nodes) > 0):
                raise ValueError(f"{name} must be a strictly increasing 1-D grid of >= 2 nodes")

    @property
    def lambda_top_e(self) -> float:
        """Largest tabulated lambda (electron); beyond it no correction is made."""
        return float(self.lambda_nodes[-1])

    @property
    def table_id(self) -> str:
        """Short content hash of the table (alpha, grids, values)."""
        h = hashlib.sha256()
        h.update(np.float64(self.alpha).tobytes())
        for arr in (self.lambda_nodes, self.sigma_nodes, self.q_lo, self.q_hi):
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def sigma_coords(self, sigma_e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sigma interval and weight of each pixel (computed once per job, shared by every backend).

        Parameters
        ----------
        sigma_e : numpy.ndarray, shape (n,), float64, electron

        Returns
        -------
        j : numpy.ndarray, shape (n,), int32
            Index of the sigma interval, ``sigma_nodes[j] <= sigma < sigma_nodes[j+1]`` (clamped).
        w : numpy.ndarray, shape (n,), float64 in [0, 1]
            Interpolation weight of node ``j+1``.
        valid : numpy.ndarray, shape (n,), bool
            False where sigma is outside the table (no correction for that pixel).
        """
        s = np.asarray(sigma_e, dtype=np.float64)
        nodes = self.sigma_nodes
        valid = (s >= nodes[0]) & (s <= nodes[-1])
        j = np.clip(np.searchsorted(nodes, s, side="right") - 1, 0, nodes.size - 2)
        w = np.where(valid, (s - nodes[j]) / (nodes[j + 1] - nodes[j]), 0.0)
        return j.astype(np.int32), w, valid

    def _bucket(self, lam_e: np.ndarray) -> np.ndarray:
        """Guide bucket of each lambda: ``int(sqrt(float32(min(lam, top))) * (B / sqrt(top)))``, in
        ``[0, B]`` for ``lam >= 0`` (NaN -> the top's bucket). Non-decreasing in lambda (every operation is,
        rounding included), which is all :attr:`_guide` relies on; float32 because its square root is
        three times as fast, and a guess needs no more."""
        u = np.fmin(lam_e, constant_row(self.lambda_top_e, lam_e.size)).astype(np.float32)
        np.sqrt(u, out=u)
        u *= np.float32(_GUIDE_BUCKETS / np.sqrt(self.lambda_top_e))
        return u.astype(np.intp)

    @functools.cached_property
    def _guide(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """Per guide bucket (:meth:`_bucket`): the interval of its smallest lambda, the node at which the
        interval goes up by one, and whether one step is exact everywhere.

        The lambdas of bucket k are the doubles from ``a_k`` (the smallest with bucket >= k, found by
        bisection on the bit patterns of non-negative doubles, which are ordered as the values) to just
        below ``a_{k+1}``; the top bucket also holds everything above the table and NaN. The interval is
        non-decreasing in lambda, so where no bucket holds more than one node (and the top bucket lies in
        the last interval, NaN's), ``first[k] + (lam >= step[k])`` is the interval of every lambda.

        Returns
        -------
        first : numpy.ndarray, shape (k_top + 1,), intp
        step : numpy.ndarray, shape (k_top + 1,), float64, electron
            ``L[first + 1]``, NaN where ``first`` is the last interval (no step).
        exact : bool
        """
        nodes, top = self.lambda_nodes, self.lambda_top_e
        k_top = int(self._bucket(np.array([top]))[0])
        k = np.arange(1, k_top + 1)
        lo = np.zeros(k.size, dtype=np.int64)  # bucket(0.0) = 0 < k
        hi = np.full(k.size, np.float64(top).view(np.int64))  # bucket(top) = k_top >= k
        while np.any(hi - lo > 1):
            mid = lo + (hi - lo) // 2
            up = self._bucket(mid.view(np.float64)) >= k
            hi = np.where(up, mid, hi)
            lo = np.where(up, lo, mid)
        start = np.concatenate([[0.0], hi.view(np.float64)])  # a_k, k = 0..k_top
        last = np.concatenate([lo.view(np.float64), [np.inf]])  # largest lambda of bucket k
        interval = self._interval_of
        first, final = interval(start), interval(last)
        exact = bool(np.all(final - first <= 1)) and first[-1] == nodes.size - 2
        step = np.append(nodes, np.nan)[first + 1]
        step[first == nodes.size - 2] = np.nan
        return first, step, exact

    def _interval_of(self, lam_e: np.ndarray) -> np.ndarray:
        """The lambda interval by plain binary search (the definition :meth:`lambda_interval` meets)."""
        return np.clip(np.searchsorted(self.lambda_nodes, lam_e, side="right") - 1, 0, self.lambda_nodes.size - 2)

    def lambda_interval(self, lam_e: np.ndarray) -> np.ndarray:
        """Index i of the lambda interval holding each value: ``nodes[i] <= lam < nodes[i+1]``.

        Exactly ``searchsorted(nodes, lam, side='right') - 1`` clamped to ``[0, n_lam - 2]`` (the CUDA
        kernel does a binary search and gets the same i), found faster: from a bucket table uniform in
        sqrt(lambda) (:attr:`_guide`), one comparison with a node where no bucket holds two nodes (the
        default grid), else corrected by comparisons with the nodes until it is exact.

        Parameters
        ----------
        lam_e : numpy.ndarray, shape (n,), float64, electron, >= 0

        Returns
        -------
        numpy.ndarray, shape (n,), intp
        """
        first, step, exact = self._guide
        k = self._bucket(lam_e)
        i = first.take(k)
        i += step.take(k) <= lam_e
        if exact:
            return i
        floor, ceiling = self._interval_bounds
        while True:
            up = ceiling.take(i) <= lam_e  # at or past the interval's top (never past the last interval)
            down = floor.take(i) > lam_e  # below its bottom (never below the first interval)
            if not (up.any() or down.any()):
                return i
            i += up
            i -= down

    @functools.cached_property
    def _interval_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per interval i: ``L[i]`` and ``L[i+1]``, NaN for the first's floor and the last's ceiling (every
        comparison with NaN is false): the clamps of :meth:`lambda_interval` built into its bounds."""
        nodes = self.lambda_nodes
        floor = nodes[:-1].copy()
        floor[0] = np.nan
        ceiling = nodes[1:].copy()
        ceiling[-1] = np.nan
        return floor, ceiling

    def lookup(
        self, lam_e: np.ndarray, j: np.ndarray, w: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bilinear interpolation of ``q_lo`` and ``q_hi`` (the operation order the CUDA kernel copies).

        Parameters
        ----------
        lam_e : numpy.ndarray, shape (n,), float64, electron, >= 0
        j, w : numpy.ndarray, shape (n,)
            Sigma coordinates from :meth:`sigma_coords`.

        Returns
        -------
        q_lo, q_hi : numpy.ndarray, shape (n,), float64, electron
        in_table : numpy.ndarray, shape (n,), bool
            False where ``lam_e`` exceeds the table's top (the quantiles are then meaningless).
        """
        # f = (lam - L[i]) / (L[i+1] - L[i]); per table T: r0 = T[i,j] (1-w) + T[i,j+1] w, r1 likewise
        # at i+1, q = r0 (1-f) + r1 f. The same operations written in place, with the four corner values
        # of both tables fetched by two row gathers of _corners (identical bits, fewer passes).
        nodes, n_sig = self.lambda_nodes, self.sigma_nodes.size
        in_table = lam_e <= nodes[-1]
        i = self.lambda_interval(lam_e)
        f = np.subtract(lam_e, nodes.take(i))
        f /= self._lambda_width.take(i)
        one_f = np.subtract(1.0, f)
        one_w = np.subtract(1.0, w)
        base = np.multiply(i, n_sig, out=i)
        base += j  # flat index of node (i, j)
        lower = self._corners.take(base, axis=0)  # (n, 4): q_lo[i, j], q_lo[i, j+1], q_hi[i, j], q_hi[i, j+1]
        base += n_sig
        upper = self._corners.take(base, axis=0)  # the same at i + 1
        scratch = np.empty_like(f)
        out = []
        for c in (0, 2):
            r0 = np.multiply(lower[:, c], one_w)
            r0 += np.multiply(lower[:, c + 1], w, out=scratch)
            r1 = np.multiply(upper[:, c], one_w)
            r1 += np.multiply(upper[:, c + 1], w, out=scratch)
            r0 *= one_f
            r1 *= f
            r0 += r1
            out.append(r0)
        return out[0], out[1], in_table

    @functools.cached_property
    def _lambda_width(self) -> np.ndarray:
        """``L[i+1] - L[i]`` for every interval (the subtraction the lookup would repeat), then a 0."""
        return np.append(np.diff(self.lambda_nodes), 0.0)

    @functools.cached_property
    def _corners(self) -> np.ndarray:
        """Row ``i * n_sig + j``: ``q_lo[i, j], q_lo[i, j+1], q_hi[i, j], q_hi[i, j+1]`` (0 past the last
        sigma column, which no lookup reaches: ``j <= n_sig - 2``), shape (n_lam * n_sig, 4)."""
        def right(t: np.ndarray) -> np.ndarray:
            return np.concatenate([t[:, 1:], np.zeros((t.shape[0], 1))], axis=1).ravel()

        return np.stack([self.q_lo.ravel(), right(self.q_lo), self.q_hi.ravel(), right(self.q_hi)], axis=1)

    def quantiles(self, lam_e, sigma_e) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated ``(q_lo, q_hi)`` (electron) at arbitrary points; NaN outside the table."""
        lam, sig = np.broadcast_arrays(np.asarray(lam_e, np.float64), np.asarray(sigma_e, np.float64))
        j, w, valid = self.sigma_coords(sig.ravel())
        lam_flat = lam.ravel()
        inside = valid & (lam_flat >= 0)
        q_lo, q_hi, in_table = self.lookup(np.where(inside, lam_flat, 0.0), j, w)
        ok = inside & in_table
        return (np.where(ok, q_lo, np.nan).reshape(lam.shape), np.where(ok, q_hi, np.nan).reshape(lam.shape))

    @functools.cached_property
    def _upper_margin(self) -> tuple[np.ndarray, np.ndarray]:
        """``q_hi - lambda`` at every node, shape (n_lam, n_sig), and whether each column increases."""
        head = self.q_hi - self.lambda_nodes[:, None]
        return head, np.all(np.diff(head, axis=0) > 0, axis=0)

    def lambda_max(self, delta_e: np.ndarray, sigma_e: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Largest lambda at which positive jumps of size ``delta_e`` stay resolvable (ALGORITHM.md s. 4).

        The first root of ``q_hi(lambda, sigma) - lambda = delta`` on the interpolated table, which is
        piecewise linear in lambda at fixed sigma, so the root is exact on the table: a binary search over
        the lambda nodes where both sigma columns of the pixel make ``q_hi - lambda`` increasing (sigma
        above about 0.4 e-), a scan of every node elsewhere. ``lambda_top_e`` where there is no root;
        0 where even ``lambda = 0`` is unresolvable; NaN where an input is NaN or sigma is off the table.

        Parameters
        ----------
        delta_e, sigma_e : numpy.ndarray, shape (n,), float64, electron
        chunk : int
            Pixels scanned at once where a scan is needed (bounds memory to ``chunk * n_lam`` floats).

        Returns
        -------
        numpy.ndarray, shape (n,), float64, electron
        """
        delta = np.asarray(delta_e, dtype=np.float64).ravel()
        sigma = np.asarray(sigma_e, dtype=np.float64).ravel()
        if delta.shape != sigma.shape:
            raise ValueError(f"delta_e shape {delta.shape} differs from sigma_e shape {sigma.shape}")
        out = np.full(delta.shape, np.nan)
        j, w, valid = self.sigma_coords(np.nan_to_num(sigma, nan=-1.0))
        good = np.flatnonzero(valid & np.isfinite(delta))
        nodes = self.lambda_nodes
        n_lam = nodes.size
        head, increasing = self._upper_margin

        def margin(i: np.ndarray, sel: np.ndarray) -> np.ndarray:
            """q_hi - lambda - delta at lambda node(s) ``i`` for pixels ``sel``, interpolated in sigma."""
            jj, ww = j[sel], w[sel]
            return head[i, jj] * (1.0 - ww) + head[i, jj + 1] * ww - delta[sel]

        lo = np.zeros(good.size, dtype=np.int64)  # node below the root (margin < 0)
        hi = np.full(good.size, n_lam - 1)  # node at or above it (margin >= 0)
        top = margin(hi, good) < 0
        zero = margin(lo, good) >= 0
        search = np.flatnonzero(~top & ~zero & increasing[j[good]] & increasing[j[good] + 1])
        while search.size:
            mid = (lo[search] + hi[search]) // 2
            up = margin(mid, good[search]) >= 0
            hi[search[up]] = mid[up]
            lo[search[~up]] = mid[~up]
            search = search[hi[search] - lo[search] > 1]
        scan = np.flatnonzero(~top & ~zero & ~(increasing[j[good]] & increasing[j[good] + 1]))
        for a in range(0, scan.size, chunk):
            part = scan[a : a + chunk]
            m = margin(np.arange(n_lam)[:, None], good[part][None, :])  # (n_lam, len(part))
            hi[part] = np.argmax(m >= 0, axis=0)
            lo[part] = hi[part] - 1
        res = np.full(good.size, self.lambda_top_e)
        res[zero] = 0.0
        k = np.flatnonzero(~top & ~zero)
        m0, m1 = margin(lo[k], good[k]), margin(hi[k], good[k])
        res[k] = nodes[lo[k]] + (nodes[hi[k]] - nodes[lo[k]]) * (-m0) / (m1 - m0)
        out[good] = res
        return out

    # ---- storage ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as ``.npz`` (no pickled objects)."""
        np.savez(
            path,
            format_version=np.int64(TABLE_FORMAT_VERSION),
            alpha=np.float64(self.alpha),
            lambda_nodes=self.lambda_nodes,
            sigma_nodes=self.sigma_nodes,
            q_lo=self.q_lo,
            q_hi=self.q_hi,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> ThresholdTable:
        """Read a table written by :meth:`save`; refuses pickled content and other format versions.

        Raises
        ------
        ValueError
            Not a readable ``.npz`` (truncated, garbage, pickled objects), a missing array, or another
            format version; the message names the file.
        """
        names = ("format_version", "alpha", "lambda_nodes", "sigma_nodes", "q_lo", "q_hi")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in names}
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError) as exc:
            raise ValueError(f"threshold table {path}: not a readable table .npz ({exc})") from exc
        version = int(arrays["format_version"])
        if version != TABLE_FORMAT_VERSION:
            raise ValueError(f"threshold table {path}: format version {version}, expected "
                             f"{TABLE_FORMAT_VERSION}")
        return cls(
            alpha=float(arrays["alpha"]),
            lambda_nodes=arrays["lambda_nodes"],
            sigma_nodes=arrays["sigma_nodes"],
            q_lo=arrays["q_lo"],
            q_hi=arrays["q_hi"],
        )


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (np.isfinite(alpha) and 0.0 < alpha < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    return alpha


def build_table(
    alpha: float = 0.003,
    lambda_nodes: np.ndarray | None = None,
    sigma_nodes: np.ndarray | None = None,
) -> ThresholdTable:
    """Compute the threshold table by numerical inversion of F at every grid node.

    Parameters
    ----------
    alpha : float in (0, 0.5)
        Two-sided significance of the jump test.
    lambda_nodes, sigma_nodes : numpy.ndarray, optional
        Grids in electron; default :func:`default_lambda_nodes`, :func:`default_sigma_nodes`.

    Returns
    -------
    ThresholdTable
    """
    from scipy.interpolate import CubicSpline

    alpha = _check_alpha(alpha)
    lam = default_lambda_nodes() if lambda_nodes is None else np.asarray(lambda_nodes, np.float64)
    sig = default_sigma_nodes() if sigma_nodes is None else np.asarray(sigma_nodes, np.float64)
    q_lo = np.empty((lam.size, sig.size))
    q_hi = np.empty((lam.size, sig.size))
    # Above sigma = 1.5 e- the quantiles are smooth in lambda (no Poisson staircase): invert F on every
    # 8th lambda node and fill the others with a cubic spline (error < 1e-4 e-, checked by the tests).
    coarse = np.unique(np.append(np.arange(0, lam.size, 8), lam.size - 1))
    for c, s in enumerate(sig):
        rows = coarse if s >= 1.5 else slice(None)
        for out, p in ((q_lo, alpha / 2.0), (q_hi, 1.0 - alpha / 2.0)):
            q = _column_quantiles(p, lam[rows], float(s))
            out[:, c] = q if s < 1.5 else CubicSpline(lam[rows], q)(lam)
    return ThresholdTable(alpha=alpha, lambda_nodes=lam, sigma_nodes=sig, q_lo=q_lo, q_hi=q_hi)


def _cache_dir() -> Path:
    return Path(os.environ.get("RTNSTREAM_CACHE", Path.home() / ".cache" / "rtnstream"))


def table_cache_path(alpha: float) -> Path:
    """The disk cache file of the default-grid table for ``alpha``.

    The name holds ``repr(alpha)``, the shortest text that reads back as exactly that float: two alphas share
    a file only when they are the same number (``0.4999999`` and ``0.49999999`` do not).

    Raises
    ------
    ValueError
        ``alpha`` is not in (0, 0.5).
    """
    return _cache_dir() / f"threshold-table-v{TABLE_FORMAT_VERSION}-alpha{_check_alpha(alpha)!r}.npz"


_MEMORY_TABLES = 8  # tables kept in memory (about 7 MB each)
_tables: OrderedDict[float, ThresholdTable] = OrderedDict()
_tables_lock = threading.Lock()  # guards _tables
_build_lock = threading.Lock()  # one table read or built at a time: concurrent callers wait, then share it


def _remembered(alpha: float) -> ThresholdTable | None:
    with _tables_lock:
        table = _tables.get(alpha)
        if table is not None:
            _tables.move_to_end(alpha)
        return table


def clear_table_cache() -> None:
    """Forget the tables kept in memory (the disk cache stays)."""
    with _tables_lock:
        _tables.clear()


def get_table(alpha: float = 0.003) -> ThresholdTable:
    """The default-grid table for ``alpha``: from memory, else the disk cache, else built and cached.

    Safe from any thread: one table is read or built at a time, and a caller asking for a table another
    thread is building waits for that build instead of making its own. A cached file that cannot be read
    (truncated, other version) is rebuilt and replaced.

    Raises
    ------
    ValueError
        ``alpha`` is not in (0, 0.5).
    """
    alpha = _check_alpha(alpha)
    table = _remembered(alpha)
    if table is not None:
        return table
    with _build_lock:
        table = _remembered(alpha) or _read_or_build(alpha)
        with _tables_lock:
            _tables[alpha] = table
            while len(_tables) > _MEMORY_TABLES:
                _tables.popitem(last=False)
    return table


def _read_or_build(alpha: float) -> ThresholdTable:
    path = table_cache_path(alpha)
    if path.exists():
        try:
            table = ThresholdTable.load(path)
            if table.alpha == alpha:
                return table
            log.warning("threshold table cache %s holds alpha=%r, not %r; rebuilding", path, table.alpha, alpha)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("threshold table cache %s unreadable (%s); rebuilding", path, exc)
    log.info("building threshold table for alpha=%r", alpha)
    table = build_table(alpha)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # per process: concurrent builds never mix
        table.save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache threshold table at %s: %s", path, exc)
    return table
