"""NumPy backend of the correction engine: the specification every other backend is checked against.

Each step is written as the fixed sequence of float64 operations the CUDA kernels repeat (sequential sums in
window order, median as ``(a + b) * 0.5`` of the two middle values, no fused multiply-add), so integer
output is bit-identical across backends. The decision (ALGORITHM.md sections 2-3) lives in
:func:`decide`; the temporal and spatial references in :meth:`NumpyBackend.correct_temporal` and
:meth:`NumpyBackend.correct_spatial`. Two-trap pixels (docs/algorithm.md section 9) are then re-decided by
:func:`~rtnstream.kernels.two_trap.decide_two_trap` and corrected by their level: at the neighbour median's
lambda (spatial), or at :func:`~rtnstream.kernels.two_trap.temporal_lambda_two_trap`'s with its de-jumped
spread for the veto and the centre rule (temporal references).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace

import numpy as np

from rtnstream.kernels import two_trap as tt
from rtnstream.kernels.lut import ThresholdTable, constant_row
from rtnstream.kernels.pixels import PixelParams, neighbour_indices

__all__ = [
    "STATE_NONE",
    "STATE_LOW",
    "STATE_HIGH",
    "STATE_VETO",
    "STATE_OUT_OF_TABLE",
    "FrameCounts",
    "PixelCounters",
    "NumpyBackend",
    "decide",
    "two_trap_states",
    "apply_corrections",
    "gather",
    "scatter",
]

STATE_NONE = 0  # left unchanged: no significant jump, or not resolvable
STATE_LOW = 1  # negative jump: x' = x + D_adu
STATE_HIGH = 2  # positive jump: x' = x - D_adu
STATE_VETO = 3  # variable source (temporal references): left unchanged
STATE_OUT_OF_TABLE = 4  # lambda or sigma outside the threshold table: left unchanged


@dataclass(frozen=True)
class FrameCounts:
    """What the engine did to one frame (numbers of RTN pixels)."""

    low: int = 0
    high: int = 0
    vetoed: int = 0
    out_of_table: int = 0

    @classmethod
    def from_states(cls, state: np.ndarray) -> FrameCounts:
        """Count each decision code in ``state`` (shape (n,), uint8)."""
        low, high, vetoed, out = (int(np.count_nonzero(state == code))
                                  for code in (STATE_LOW, STATE_HIGH, STATE_VETO, STATE_OUT_OF_TABLE))
        return cls(low=low, high=high, vetoed=vetoed, out_of_table=out)


@dataclass
class PixelCounters:
    """Per-RTN-pixel counts over a series (ALGORITHM.md section 5); arrays of shape (n,), int64.

    ``n_lo`` / ``n_hi`` count corrections upward / downward (a two-trap pixel's by the sign of its level's
    offset); ``n_level``, shape (n_two_trap, 8), int64, the two-trap pixels' corrections per level (in the
    order of ``PixelParams.two_trap_pos`` and :data:`~rtnstream.kernels.two_trap.LEVEL_I`).
    """

    n_lo: np.ndarray
    n_hi: np.ndarray
    n_veto: np.ndarray
    n_frames: np.ndarray
    n_level: np.ndarray = field(default_factory=lambda: np.zeros((0, tt.N_LEVELS), dtype=np.int64))


_TALLY_CODES = (STATE_LOW, STATE_HIGH, STATE_VETO)  # the decisions counted per pixel: n_lo, n_hi, n_veto


class _Tally:
    """Per-pixel decision counts of a series, kept per block of pixels as uint8 counts of the latest frames
    (one byte-wide addition per decision code and frame) folded into int64 totals every 255 frames.

    Parameters
    ----------
    blocks : list of slice
        Disjoint blocks covering the n pixels, in order; each block is counted by one thread at a time.
    """

    def __init__(self, blocks: list[slice]) -> None:
        self._blocks = blocks
        n = blocks[-1].stop if blocks else 0
        self._total = np.zeros((len(_TALLY_CODES), n), dtype=np.int64)
        self._recent = np.zeros((len(_TALLY_CODES), n), dtype=np.uint8)
        self._frames = [0] * len(blocks)  # frames counted, per block
        self._unfolded = [0] * len(blocks)  # frames in _recent, per block (< 256)

    def add(self, block: int, state: np.ndarray) -> None:
        """Count the decisions ``state`` (shape of the block, uint8) of one frame in block ``block``."""
        sl = self._blocks[block]
        hit = np.empty(state.shape, dtype=bool)
        for recent, code in zip(self._recent[:, sl], _TALLY_CODES, strict=True):
            recent += np.equal(state, code, out=hit).view(np.uint8)
        self._frames[block] += 1
        self._unfolded[block] += 1
        if self._unfolded[block] == 255:  # the next frame could wrap a uint8 count: fold into the totals
            self._total[:, sl] += self._recent[:, sl]
            self._recent[:, sl] = 0
            self._unfolded[block] = 0

    def counters(self, n_level: np.ndarray | None = None) -> PixelCounters:
        """The counts so far, as new int64 arrays, with a copy of the two-trap pixels' ``n_level`` if given."""
        n_lo, n_hi, n_veto = self._total + self._recent
        sizes = [sl.stop - sl.start for sl in self._blocks]
        frames = np.repeat(np.array(self._frames, dtype=np.int64), sizes)
        if n_level is None:
            return PixelCounters(n_lo, n_hi, n_veto, frames)
        return PixelCounters(n_lo, n_hi, n_veto, frames, n_level=n_level.copy())


def decide(
    x_adu: np.ndarray, lam_e: np.ndarray, params: PixelParams, table: ThresholdTable,
    sl: slice = slice(None),
) -> np.ndarray:
    """Jump decision of ALGORITHM.md section 3 for every RTN pixel.

    Parameters
    ----------
    x_adu : numpy.ndarray, shape (n,), adu
        Pixel values in this frame: float64, or a frame dtype (converted exactly, as the kernel does).
    lam_e : numpy.ndarray, shape (n,), float64, electron, >= 0
        Expected photo-electrons from the reference.
    params : PixelParams
    table : ThresholdTable
    sl : slice
        The RTN pixels ``x_adu`` and ``lam_e`` belong to (default: all).

    Returns
    -------
    numpy.ndarray, shape (n,), uint8
        ``STATE_NONE``, ``STATE_LOW``, ``STATE_HIGH`` or ``STATE_OUT_OF_TABLE``.
    """
    # low  = (q_lo - d < s) & (s < min(q_lo, q_hi - d)) & (lam - q_lo < d)
    # high = (max(q_hi, q_lo + d) < s) & (s < q_hi + d) & (q_hi - lam < d)
    # written with one scratch array (the same operations, so the same bits as the CUDA kernel's).
    s = np.subtract(x_adu, params.mu_adu[sl])
    s *= params.gain_e_per_adu
    q_lo, q_hi, in_table = table.lookup(lam_e, params.sigma_j[sl], params.sigma_w[sl])
    d = params.delta_e[sl]
    t = np.subtract(q_lo, d)
    low = t < s
    np.minimum(q_lo, np.subtract(q_hi, d, out=t), out=t)
    low &= s < t
    low &= np.subtract(lam_e, q_lo, out=t) < d
    np.maximum(q_hi, np.add(q_lo, d, out=t), out=t)
    high = t < s
    high &= s < np.add(q_hi, d, out=t)
    high &= np.subtract(q_hi, lam_e, out=t) < d
    state = high.view(np.uint8) << 1  # STATE_HIGH = 2; low and high exclude each other (q_lo <= q_hi)
    state |= low.view(np.uint8)  # STATE_LOW = 1
    in_table &= params.sigma_ok[sl]
    if not in_table.all():
        np.copyto(state, STATE_OUT_OF_TABLE, where=~in_table)
    return state


def apply_corrections(
    frame: np.ndarray, x_native: np.ndarray, state: np.ndarray, params: PixelParams, in_place: bool = False
) -> np.ndarray:
    """Correct ``frame``: low-state pixels up by D_adu, high-state down; saturating at the dtype's range.

    Parameters
    ----------
    frame : numpy.ndarray, shape (ny, nx), C-contiguous
        The input frame (modified only with ``in_place``).
    x_native : numpy.ndarray, shape (n,), frame dtype
        The RTN pixels' values in ``frame``.
    state : numpy.ndarray, shape (n,), uint8
    params : PixelParams
    in_place : bool
        False: correct a copy. True: write the corrected pixels into ``frame`` and return it.

    Returns
    -------
    numpy.ndarray, shape (ny, nx), frame dtype
        A new array, or ``frame`` itself with ``in_place``.
    """
    out = frame if in_place else frame.copy()
    changed = np.flatnonzero((state == STATE_LOW) | (state == STATE_HIGH))
    if changed.size == 0:
        return out
    sign = np.where(state[changed] == STATE_LOW, 1, -1)
    if np.issubdtype(frame.dtype, np.integer):
        info = np.iinfo(frame.dtype)
        new = x_native[changed].astype(np.int64) + sign * params.delta_adu_int[changed]
        new = np.clip(new, info.min, info.max)
    else:
        new = x_native[changed].astype(np.float64) + sign * params.delta_adu_float[changed]
    out.reshape(-1)[params.index[changed]] = new.astype(frame.dtype)
    return out


GATHER_CHUNK = 1 << 18  # RTN pixels per gather task (2 MB of int64 indices: large enough to amortise a task)


def gather(flat: np.ndarray, index: np.ndarray, out: np.ndarray, pool: ThreadPoolExecutor | None = None) -> None:
    """``out[:] = flat[index]``, in chunks spread over ``pool`` (``np.take`` releases the GIL).

    Parameters
    ----------
    flat : numpy.ndarray, shape (ny * nx,)
        A frame, flattened.
    index : numpy.ndarray, shape (n,), int64
        Flat indices, all valid (they are not checked: ``mode='clip'`` skips the bounds test).
    out : numpy.ndarray, shape (n,), ``flat``'s dtype
    pool : ThreadPoolExecutor, optional
        Workers; None gathers on the calling thread.
    """
    n = index.size
    if pool is None or n <= GATHER_CHUNK:
        np.take(flat, index, out=out, mode="clip")
        return
    chunks = [slice(a, min(a + GATHER_CHUNK, n)) for a in range(0, n, GATHER_CHUNK)]
    for f in [pool.submit(np.take, flat, index[c], None, out[c], "clip") for c in chunks]:
        f.result()


def scatter(flat: np.ndarray, index: np.ndarray, values: np.ndarray, pool: ThreadPoolExecutor | None = None
            ) -> None:
    """``flat[index] = values`` for distinct indices, in chunks spread over ``pool`` (disjoint writes).

    Parameters
    ----------
    flat : numpy.ndarray, shape (ny * nx,)
        A frame, flattened (written).
    index : numpy.ndarray, shape (m,), int64
        Distinct flat indices.
    values : numpy.ndarray, shape (m,), ``flat``'s dtype
    pool : ThreadPoolExecutor, optional
    """
    m = index.size
    if pool is None or m <= GATHER_CHUNK:
        flat[index] = values
        return
    for f in [pool.submit(flat.__setitem__, index[a:a + GATHER_CHUNK], values[a:a + GATHER_CHUNK])
              for a in range(0, m, GATHER_CHUNK)]:
        f.result()


def _batcher_comparators(w: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort of ``w`` rows: the comparators ``(i, j)``, ``i < j`` (min to row i,
    max to row j), in order. Built for the next power of two; a comparator reaching past row ``w - 1``
    meets a padding row of +inf, which it leaves in place, so it is dropped."""
    n = 1
    while n < w:
        n *= 2
    out = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < w:
                        out.append((a, b))
            k //= 2
        p *= 2
    return out


def median_pair_network(w: int) -> list[tuple[int, int, bool, bool]]:
    """Selection network for rows ``w // 2 - 1`` and ``w // 2`` of ``w`` sorted rows (the window median's pair).

    Batcher's sorting network pruned backwards to the comparators that feed those two rows; each kept
    comparator computes only the sides that are used later.

    Returns
    -------
    list of (i, j, want_min, want_max)
        In order: ``row[i] = min(row[i], row[j])`` if ``want_min`` and ``row[j] = max(...)`` if
        ``want_max`` (both from the values before the comparator). With ``np.minimum`` / ``np.maximum``
        the two rows are exactly the sorted values for numbers, and NaN wherever the window holds a NaN
        (every input reaches both rows, and a NaN operand is returned): the odd-even transposition sort of
        ``rtn_window_median`` in kernels/rtn_correct.cu gives the same.
    """
    if w < 2:
        raise ValueError(f"window w must be >= 2, got {w}")
    need = {w // 2 - 1, w // 2}
    kept = []
    for i, j in reversed(_batcher_comparators(w)):
        want_min, want_max = i in need, j in need
        if want_min or want_max:
            kept.append((i, j, want_min, want_max))
            need |= {i, j}
    return kept[::-1]


def _median_pair(vals: np.ndarray, network: list[tuple[int, int, bool, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``W/2 - 1`` and ``W/2`` of ``vals`` (shape (W, n)) sorted per column, by ``network``
    (:func:`median_pair_network`); on small W and cache-sized blocks far faster than ``np.partition``."""
    rows = list(vals)
    for i, j, want_min, want_max in network:
        lo = np.minimum(rows[i], rows[j]) if want_min else None
        if want_max:
            rows[j] = np.maximum(rows[i], rows[j])
        if want_min:
            rows[i] = lo
    w = len(rows)
    return rows[w // 2 - 1], rows[w // 2]


def two_trap_states(level: np.ndarray, level_low: np.ndarray) -> np.ndarray:
    """The STATE_* code of each two-trap decision: its correction's direction, for the counters.

    Parameters
    ----------
    level : numpy.ndarray, shape (m,), uint8
        From :func:`~rtnstream.kernels.two_trap.decide_two_trap`.
    level_low : numpy.ndarray, shape (m, 8), bool
        Where a level's offset ``i D1 + j D2`` is negative (its correction goes up).

    Returns
    -------
    numpy.ndarray, shape (m,), uint8
        ``STATE_LOW`` (corrected upward), ``STATE_HIGH`` (downward), ``STATE_NONE`` or ``STATE_OUT_OF_TABLE``.
    """
    jumped = (level >= 1) & (level <= tt.N_LEVELS)
    k = np.where(jumped, level.astype(np.int64) - 1, 0)
    low = level_low[np.arange(level.size), k]
    state = np.where(low, STATE_LOW, STATE_HIGH).astype(np.uint8)
    state[~jumped] = STATE_NONE
    state[level == tt.TT_OUT_OF_TABLE] = STATE_OUT_OF_TABLE
    return state


@dataclass(frozen=True, eq=False)
class _TwoTrapBlock:
    """The two-trap pixels of one block of RTN pixels: their range in ``two_trap_pos``, their positions in
    the block, their parameters and their levels' directions."""

    first: int
    local: np.ndarray
    params: tt.TwoTrapParams
    level_low: np.ndarray


def _two_trap_blocks(params: PixelParams, blocks: list[slice]) -> list[_TwoTrapBlock | None]:
    """Per block of RTN pixels, its two-trap pixels (None where it has none)."""
    out: list[_TwoTrapBlock | None] = []
    pos = params.two_trap_pos
    for sl in blocks:
        a, b = np.searchsorted(pos, [sl.start, sl.stop])
        if a == b:
            out.append(None)
            continue
        sub = replace(params.two_trap, **{f.name: getattr(params.two_trap, f.name)[a:b]
                                          for f in fields(params.two_trap) if f.name != "gain_e_per_adu"})
        low = tt.level_offsets_e(sub.delta1_e, sub.delta2_e) < 0
        out.append(_TwoTrapBlock(int(a), pos[a:b] - sl.start, sub, low))
    return out


class NumpyBackend:
    """Ring buffer of the RTN pixels and the per-frame correction, on the host.

    The RTN pixels are processed in blocks of ``block`` pixels (so the temporaries stay in cache) spread
    over a pool of threads (NumPy releases the GIL in its loops); blocks are independent, so the result
    does not depend on the block size or the number of threads.

    Parameters
    ----------
    params : PixelParams
    table : ThresholdTable
    k_var : float
        Variability-veto factor (temporal references).
    spatial_size : int
        Neighbourhood size of the spatial reference.
    n_slots : int
        Ring-buffer slots (W + 1 for the temporal references, 0 for spatial).
    threads : int, optional
        Worker threads (default: the number of CPUs).
    block : int
        RTN pixels per block.
    """

    name = "numpy"
    device = "cpu"
    pipelined = False  # every correction is done when its method returns

    def __init__(self, params: PixelParams, table: ThresholdTable, k_var: float, spatial_size: int,
                 n_slots: int, threads: int | None = None, block: int = 1 << 15) -> None:
        self.params = params
        self.table = table
        self.k_var = float(k_var)
        self.n_slots = n_slots
        self._neighbours = neighbour_indices(params.shape, params.index, spatial_size) if n_slots == 0 else None
        self._ring: np.ndarray | None = None
        self._block = block
        self._blocks = [slice(a, min(a + block, params.n)) for a in range(0, params.n, block)]
        self._threads = threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._tally = _Tally(self._blocks)
        self._two_trap_blocks = _two_trap_blocks(params, self._blocks)
        self._levels = np.zeros(params.n_two_trap, dtype=np.uint8)  # this frame's two-trap decisions
        self._n_level = np.zeros((params.n_two_trap, tt.N_LEVELS), dtype=np.int64)  # corrections per level
        self._state = np.zeros(params.n, dtype=np.uint8)  # the last frame's decisions
        self._networks = {n_slots - 1: median_pair_network(n_slots - 1)} if n_slots > 2 else {}

    def reset(self, dtype: np.dtype) -> None:
        """Start a series of frames of ``dtype``: empty ring, zero per-pixel counters."""
        if self.n_slots:
            self._ring = np.zeros((self.n_slots, self.params.n), dtype=dtype)
        self._tally = _Tally(self._blocks)
        self._n_level[:] = 0

    @property
    def counters(self) -> PixelCounters:
        """Per-RTN-pixel counts of the current series (new arrays, each of shape (n,), int64; ``n_level``
        (n_two_trap, 8))."""
        return self._tally.counters(self._n_level)

    def store(self, slot: int, frame: np.ndarray) -> None:
        """Gather the RTN pixels of ``frame`` (shape (ny, nx)) into ring slot ``slot``."""
        gather(frame.reshape(-1), self.params.index, self._ring[slot], self._executor())

    def correct_temporal(self, frame: np.ndarray, slot: int, window_slots: Sequence[int], in_place: bool = False
                         ) -> tuple[np.ndarray, FrameCounts]:
        """Correct ``frame`` (stored in ``slot``) against the median of ``window_slots``.

        ``window_slots`` are the W ring slots of the reference frames in time order (the order of the
        sums of the variability veto). ``in_place``: correct ``frame`` itself and return it (the ring
        keeps the values as stored, so the frames that use this one as reference are not affected).
        """
        rows = list(window_slots)
        x = self._ring[slot]
        state = self._map(lambda sl: self._temporal_block(x, rows, sl))
        return self._finish(frame, x, state, in_place)

    def _temporal_block(self, x: np.ndarray, rows: list[int], sl: slice) -> np.ndarray:
        # The operations of rtn_temporal_body, in its order (in place where NumPy allows, same bits):
        #   lam = max(((v[W/2-1] + v[W/2]) * 0.5 - mu) * g, 0) of the sorted window v
        #   mean = (sum_r v_r) / W, spread = sqrt((sum_r (v_r - mean)^2) / W) * g, sums in window order
        #   veto = spread > k_var * sqrt(lam + RN^2)
        p = self.params
        g = p.gain_e_per_adu
        w = len(rows)
        vals = self._ring[rows, sl]
        lower, upper = _median_pair(vals, self._median_network(w))
        lam = np.add(lower, upper, dtype=np.float64)
        lam *= 0.5
        lam -= p.mu_adu[sl]
        lam *= g
        np.maximum(lam, constant_row(0.0, lam.size), out=lam)
        vf = vals.astype(np.float64)
        mean = vf[0].copy()
        for r in range(1, w):
            mean += vf[r]
        mean /= w
        vf -= mean
        vf *= vf
        acc = vf[0]
        for r in range(1, w):
            acc += vf[r]
        acc /= w
        spread_e = np.sqrt(acc, out=acc)
        spread_e *= g
        bound = np.add(lam, p.rn2_e2[sl])
        np.sqrt(bound, out=bound)
        bound *= self.k_var
        veto = spread_e > bound
        state = decide(x[sl], lam, p, self.table, sl)
        np.copyto(state, STATE_VETO, where=veto)
        self._decide_two_trap(x, lam, state, sl, rows)
        return self._count(state, sl)

    def _median_network(self, w: int) -> list[tuple[int, int, bool, bool]]:
        """The median-pair network of a ``w``-frame window (made once per window length)."""
        network = self._networks.get(w)
        if network is None:
            network = self._networks[w] = median_pair_network(w)
        return network

    def correct_spatial(self, frame: np.ndarray, in_place: bool = False) -> tuple[np.ndarray, FrameCounts]:
        """Correct ``frame`` against the median of each RTN pixel's bias-subtracted neighbours.

        ``in_place``: correct ``frame`` itself (after every reference was read) and return it.
        """
        flat = frame.reshape(-1)
        x = np.empty(self.params.n, dtype=frame.dtype)
        gather(flat, self.params.index, x, self._executor())
        state = self._map(lambda sl: self._spatial_block(flat, x, sl))
        return self._finish(frame, x, state, in_place)

    def _spatial_block(self, flat: np.ndarray, x: np.ndarray, sl: slice) -> np.ndarray:
        p = self.params
        nb = self._neighbours[sl]
        inside = nb >= 0
        safe = np.where(inside, nb, 0)
        vals = np.where(inside, flat[safe].astype(np.float64) - p.meanbias_adu[safe], np.nan)
        vals.sort(axis=1)  # NaN (outside the frame) sort last
        count = inside.sum(axis=1)
        rows = np.arange(nb.shape[0])
        upper = vals[rows, count // 2]
        lower = vals[rows, (count - 1) // 2]
        lam = np.maximum(((lower + upper) * 0.5) * p.gain_e_per_adu, 0.0)
        state = decide(x[sl], lam, p, self.table, sl)
        self._decide_two_trap(x, lam, state, sl)
        return self._count(state, sl)

    def _two_trap_reference(self, lam_e: np.ndarray, block: _TwoTrapBlock, sl: slice, rows: list[int] | None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Lambda (electron) and variability veto of the block's two-trap pixels (docs/algorithm.md s. 9).

        Spatial reference (``rows`` None): the neighbour median's lambda, no veto. Temporal references
        (``rows``: the W window slots in time order): :func:`~rtnstream.kernels.two_trap.temporal_lambda_two_trap`
        on their window values, and the veto ``spread > k_var sqrt(lambda + RN^2)`` on its de-jumped
        spread; where the window median's lambda is NaN (a NaN in the window, or +inf and -inf at its
        middle) it stays NaN (out of table, as for one-trap pixels) and nothing is vetoed.
        """
        lam = lam_e[block.local]
        if rows is None:
            return lam, np.zeros(lam.size, dtype=bool)
        window = self._ring[np.ix_(rows, sl.start + block.local)]
        lam_tt, spread_e = tt.temporal_lambda_two_trap(window, block.params)
        lam = np.where(np.isnan(lam), lam, lam_tt)
        bound = np.add(lam, self.params.rn2_e2[sl][block.local])
        np.sqrt(bound, out=bound)
        bound *= self.k_var
        return lam, spread_e > bound

    def _decide_two_trap(self, x: np.ndarray, lam_e: np.ndarray, state: np.ndarray, sl: slice,
                         rows: list[int] | None = None) -> None:
        """Re-decide the block's two-trap pixels by their combined levels (docs/algorithm.md section 9).

        ``lam_e`` is the block's lambda, ``rows`` the window slots (temporal references) or None (spatial);
        ``state`` (the block's one-trap decisions) gets the two-trap pixels' STATE_* codes; their level
        codes go to this frame's levels and the per-level counters (a vetoed pixel is left uncorrected).
        Blocks are disjoint: safe across threads.
        """
        block = self._two_trap_blocks[sl.start // self._block]
        if block is None:
            return
        local = block.local
        lam, vetoed = self._two_trap_reference(lam_e, block, sl, rows)
        level = tt.decide_two_trap(x[sl][local].astype(np.float64), lam, block.params, self.table,
                                   beat_centre=rows is not None)
        level[vetoed] = tt.TT_NONE
        state[local] = np.where(vetoed, STATE_VETO, two_trap_states(level, block.level_low))
        self._levels[block.first:block.first + local.size] = level
        moved = np.flatnonzero((level >= 1) & (level <= tt.N_LEVELS))  # one level per pixel: no repeats
        self._n_level[block.first + moved, level[moved].astype(np.int64) - 1] += 1

    def _count(self, state: np.ndarray, sl: slice) -> np.ndarray:
        """Add a block's decisions to the per-pixel counters (blocks are disjoint: safe across threads)."""
        self._tally.add(sl.start // self._block, state)
        return state

    def _executor(self) -> ThreadPoolExecutor | None:
        """The worker pool (made at first use), or None with one thread."""
        if self._threads > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="rtn-numpy")
        return self._pool

    def _map(self, work) -> np.ndarray:
        """Run ``work(slice) -> states`` over every block of RTN pixels; the states, shape (n,), uint8."""
        pool = self._executor()
        if pool is not None and len(self._blocks) > 1:
            parts = list(pool.map(work, self._blocks))
        else:
            parts = [work(sl) for sl in self._blocks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)

    def _finish(self, frame: np.ndarray, x: np.ndarray, state: np.ndarray, in_place: bool
                ) -> tuple[np.ndarray, FrameCounts]:
        out = apply_corrections(frame, x, state, self.params, in_place)
        p = self.params
        if p.n_two_trap:  # their one-trap correction above is replaced by their level's
            moved = np.flatnonzero((self._levels >= 1) & (self._levels <= tt.N_LEVELS))
            pos = p.two_trap_pos
            values = tt.apply_two_trap(x[pos], self._levels, p.two_trap)
            out.reshape(-1)[p.index[pos[moved]]] = values[moved]
        self._state = state
        return out, FrameCounts.from_states(state)

    def frame_states(self) -> np.ndarray:
        """Decisions of the frame corrected last, shape (n,), uint8: ``STATE_LOW``, ``STATE_HIGH``,
        ``STATE_VETO`` or ``STATE_NONE`` (out of table included): the counter each pixel's decision raised."""
        state = self._state.copy()
        state[state == STATE_OUT_OF_TABLE] = STATE_NONE
        return state
