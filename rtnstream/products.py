"""Per-frame data products of a correction: data-quality flags, uncertainty, mask and provenance keywords.

One place decides what a corrected frame carries, whichever path wrote it (offline ``correct``, the Python
API :func:`rtnstream.correct_ccddata`, the live FITS sink): :class:`SeriesCorrector` runs one series
through the engine and returns :class:`FrameProducts`; :func:`rtn_header_cards` are the provenance
keywords. The bit values and the uncertainty model are documented in docs/formats.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rtnstream import __version__
from rtnstream.kernels.cube import DQ_ANOMALOUS_MEAN, DQ_ANOMALOUS_STD, DQ_HOT, DQ_TWO_TRAP, RTNCube
from rtnstream.kernels.engine import BackendName, CorrectedFrame, EngineSettings, RTNEngine
from rtnstream.kernels.numpy_backend import STATE_HIGH, STATE_LOW, STATE_VETO, FrameCounts
from rtnstream.kernels.pixels import PixelParams

__all__ = [
    "DQ_BITS",
    "DQF_RTN",
    "DQF_LOW",
    "DQF_HIGH",
    "DQF_VETOED",
    "DQF_NOT_CORRECTABLE",
    "DQF_TWO_TRAP",
    "DQF_ANOMALOUS",
    "DQF_HOT",
    "Mode",
    "FrameProducts",
    "FrameModel",
    "SeriesCorrector",
    "rtn_header_cards",
    "history_line",
]

Mode = Literal["correct", "mask"]

DQF_RTN = 1  # the cube has RTN parameters for this pixel
DQF_LOW = 2  # low-state jump found in this frame (corrected: +D_adu; masking mode: flagged only)
DQF_HIGH = 4  # high-state jump found in this frame (corrected: -D_adu; masking mode: flagged only)
DQF_VETOED = 8  # left alone in this frame: the reference window varies (variable source)
DQF_NOT_CORRECTABLE = 16  # positive jumps unresolvable here: sigma outside the table or signal >= lambda_max
#                            (a two-trap pixel's: LAMMAX2, that of its smallest level, docs/algorithm.md s. 9)
DQF_TWO_TRAP = 32  # the cube flags this pixel as two-trap (two independent traps, docs/algorithm.md section 9)
DQF_ANOMALOUS = 64  # the cube flags an anomalous mean or standard deviation
DQF_HOT = 128  # the cube flags a hot pixel

# DQ header keyword -> (bit, meaning): written into every DQ extension
DQ_BITS: dict[str, tuple[int, str]] = {
    "DQ_RTN": (DQF_RTN, "RTN pixel of the cube"),
    "DQ_LOW": (DQF_LOW, "low-state jump (corrected, or flagged in mask mode)"),
    "DQ_HIGH": (DQF_HIGH, "high-state jump (corrected, or flagged in mask mode)"),
    "DQ_VETO": (DQF_VETOED, "vetoed: variable reference window"),
    "DQ_NOCOR": (DQF_NOT_CORRECTABLE, "not correctable: out of table or lambda>=lammax"),
    "DQ_2TRAP": (DQF_TWO_TRAP, "two-trap pixel (cube DQ)"),
    "DQ_ANOM": (DQF_ANOMALOUS, "anomalous mean or std (cube DQ)"),
    "DQ_HOT": (DQF_HOT, "hot pixel (cube DQ)"),
}


def rtn_header_cards(settings: EngineSettings, cube_id: str, counts: FrameCounts, corrected: bool = True, *,
                     mode: Mode = "correct", cube_file: str | None = None, origin: tuple[int, int] | None = None,
                     series: int | None = None, forced: tuple[str, ...] = ()) -> list[tuple[str, Any, str]]:
    """Provenance keywords of a corrected frame or file, as ``(keyword, value, comment)``.

    RTNCORR, RTNMODE, RTNREF, RTNWIN (or RTNSPAT for the spatial reference), RTNKVAR, RTNALPHA, RTNCUBE,
    RTNCUBEF (cube file name), RTNXORG / RTNYORG (subframe origin in the cube), RTNSER (series number),
    RTNFORCE (guards overridden), RTNNLO, RTNNHI, RTNNVETO, RTNVERS. RTNCORR is true only for a frame whose
    pixels were corrected (not in masking mode, not for a frame passed through unchanged).
    """
    cards: list[tuple[str, Any, str]] = [
        ("RTNCORR", bool(corrected) and mode == "correct", "RTN jumps corrected by rtnstream"),
        ("RTNMODE", mode, "correct, or mask: jumps flagged only"),
        ("RTNREF", settings.reference, "RTN reference: temporal, causal or spatial"),
    ]
    if settings.temporal:
        cards.append(("RTNWIN", settings.window, "[frames] temporal reference window"))
        cards.append(("RTNKVAR", settings.k_var, "variability veto factor"))
    else:
        cards.append(("RTNSPAT", settings.spatial_size, "[pixel] spatial reference size"))
    cards += [
        ("RTNALPHA", settings.alpha, "significance of the jump test"),
        ("RTNCUBE", cube_id, "RTN calibration cube id"),
    ]
    if cube_file is not None:
        cards.append(("RTNCUBEF", cube_file[-68:], "RTN calibration file name"))
    if origin is not None:
        cards.append(("RTNXORG", int(origin[1]), "[pixel] subframe x origin in the cube"))
        cards.append(("RTNYORG", int(origin[0]), "[pixel] subframe y origin in the cube"))
    if series is not None:
        cards.append(("RTNSER", int(series), "series number in this run"))
    if forced:
        cards.append(("RTNFORCE", ",".join(forced)[:68], "guards overridden with --force"))
    cards += [
        ("RTNNLO", counts.low, "pixels corrected from the low state"),
        ("RTNNHI", counts.high, "pixels corrected from the high state"),
        ("RTNNVETO", counts.vetoed, "RTN pixels left alone: variable source"),
        ("RTNVERS", __version__, "rtnstream version"),
    ]
    return cards


def history_line(cube_id: str, mode: Mode, corrected: bool) -> str:
    """The HISTORY line of an output frame (one card; the counts are in RTNNLO / RTNNHI / RTNNVETO)."""
    if mode == "mask":
        return f"rtnstream {__version__}: RTN jumps flagged (mask mode), cube {cube_id}"
    if not corrected:
        return f"rtnstream {__version__}: passed through uncorrected, cube {cube_id}"
    return f"rtnstream {__version__}: RTN jumps corrected, cube {cube_id}"


@dataclass
class FrameProducts:
    """One frame out of :class:`SeriesCorrector`.

    Attributes
    ----------
    index : int
        Position in the series.
    data : numpy.ndarray, shape (ny, nx), the input dtype
        Corrected pixels (``mode='correct'``) or the input pixels (``mode='mask'``); a new array or the
        caller's untouched input, never a modified input.
    dq : numpy.ndarray, shape (ny, nx), uint16, or None
        Bit flags ``DQF_*`` (None when DQ is off).
    uncertainty : numpy.ndarray, shape (ny, nx), float32, adu, or None
        Standard deviation of each pixel (None when off).
    mask : numpy.ndarray, shape (ny, nx), bool, or None
        Masking mode only: the pixels with a jump in this frame.
    counts : FrameCounts
    corrected : bool
        False for a frame the engine passed through unchanged.
    tag : Any
        The caller's tag.
    """

    index: int
    data: np.ndarray
    dq: np.ndarray | None
    uncertainty: np.ndarray | None
    mask: np.ndarray | None
    counts: FrameCounts
    corrected: bool
    tag: Any


class FrameModel:
    """What the cube says about each pixel of a frame: the DQ bits and the uncertainty model.

    Parameters
    ----------
    cube : RTNCube
        The RTN parameters of the pixels of the frames (a subframe's part of the sensor's cube).
    params : PixelParams
        The engine's view of ``cube`` (its RTN pixel order is the order of the engine's states).

    Notes
    -----
    Uncertainty (adu) of a pixel: ``sqrt(RN_eff^2 + F) / g`` with ``F = max(0, (x - b) g)`` the frame's
    signal in electrons (``b`` the pixel's central level MU for RTN pixels, MEANBIAS elsewhere) and
    ``RN_eff`` the effective read noise after correction (ALGORITHM.md section 6, step 5):
    ``sigma + (RN - sigma) min(1, F / lambda_max)`` at RTN pixels of a corrected frame that were not
    vetoed in it, READNOISE at every other pixel (and at every pixel in masking mode).
    """

    def __init__(self, cube: RTNCube, params: PixelParams) -> None:
        self._index = params.index
        self._g = float(cube.gain_e_per_adu)
        flat = cube.dq.reshape(-1)
        static = np.zeros(flat.size, dtype=np.uint16)
        static[params.index] |= DQF_RTN
        static[params.index[~params.sigma_ok.astype(bool)]] |= DQF_NOT_CORRECTABLE
        static[(flat & DQ_TWO_TRAP) != 0] |= DQF_TWO_TRAP
        static[(flat & (DQ_ANOMALOUS_MEAN | DQ_ANOMALOUS_STD)) != 0] |= DQF_ANOMALOUS
        static[(flat & DQ_HOT) != 0] |= DQF_HOT
        self._static_dq = static
        # full-frame planes in float32 (the uncertainty is written as float32), MU rounded to float32 once
        level = cube.meanbias_adu.reshape(-1).astype(np.float32)
        level[params.index] = params.mu_adu
        self._level_adu = level
        readnoise = cube.readnoise_e.reshape(-1)
        # the square of a float32 is exact in float64: squaring in float32 rounds it once, as float64 then
        # float32 did
        self._rn2_e2 = readnoise.astype(np.float32) ** 2
        self._rn_rtn_e = readnoise[params.index].astype(np.float64)
        self._sigma_e = cube.rtn.sigma_e
        # where jumps stop being resolvable: a two-trap pixel's smallest level min(D2, D1 - D2) goes first
        self._lammax_e = np.where(cube.rtn.two_trap, cube.rtn.lammax2_e, cube.rtn.lammax_e)

    def products(self, data: np.ndarray, states: np.ndarray | None, corrected: bool, mode: Mode, dq: bool,
                 uncertainty: bool) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """DQ, uncertainty and mask of one output frame.

        Parameters
        ----------
        data : numpy.ndarray, shape (ny, nx)
            The output pixels (adu).
        states : numpy.ndarray, shape (n_rtn,), uint8, or None
            The engine's decisions in this frame (:attr:`CorrectedFrame.states`); None when unknown (the
            per-frame bits LOW / HIGH / VETO are then left clear).
        corrected : bool
            The frame's RTN pixels were corrected.
        mode : {'correct', 'mask'}
        dq, uncertainty : bool
            Which products to build.

        Returns
        -------
        dq : numpy.ndarray, shape (ny, nx), uint16, or None
        uncertainty : numpy.ndarray, shape (ny, nx), float32, adu, or None
        mask : numpy.ndarray, shape (ny, nx), bool, or None
            Masking mode: the pixels with a jump.
        """
        shape = data.shape
        idx = self._index
        signal_e = data.reshape(-1).astype(np.float32)
        signal_e -= self._level_adu
        signal_e *= np.float32(self._g)
        np.maximum(signal_e, 0, out=signal_e)
        signal_rtn = signal_e[idx].astype(np.float64)
        flags = mask = uncert = None
        if dq:
            flags = self._static_dq.copy()
            flags[idx[signal_rtn >= self._lammax_e]] |= DQF_NOT_CORRECTABLE
            if states is not None:
                flags[idx[states == STATE_LOW]] |= DQF_LOW
                flags[idx[states == STATE_HIGH]] |= DQF_HIGH
                flags[idx[states == STATE_VETO]] |= DQF_VETOED
            flags = flags.reshape(shape)
            if mode == "mask":
                mask = (flags & (DQF_LOW | DQF_HIGH)) != 0
        if uncertainty:
            var = signal_e  # reused in place: variance in e-^2, then the standard deviation in adu
            var += self._rn2_e2
            if mode == "correct" and corrected:
                frac = np.ones(idx.size)
                np.divide(signal_rtn, self._lammax_e, out=frac, where=self._lammax_e > 0)
                eff = self._sigma_e + (self._rn_rtn_e - self._sigma_e) * np.minimum(frac, 1.0)
                keep = states != STATE_VETO if states is not None else np.ones(idx.size, bool)
                var[idx[keep]] = eff[keep] ** 2 + signal_rtn[keep]
            np.sqrt(var, out=var)
            var /= np.float32(self._g)
            uncert = var.reshape(shape)
        return flags, uncert, mask


class SeriesCorrector:
    """Correct one series with the engine and build each frame's DQ, uncertainty and mask (:class:`FrameModel`).

    Parameters
    ----------
    cube : RTNCube
        The RTN parameters of the pixels of these frames (a subframe's part of the sensor's cube).
    settings : EngineSettings
    backend : {'auto', 'numpy', 'cupy'}
    mode : {'correct', 'mask'}
        ``'mask'``: the pixels are left as they are; the jumps are flagged in DQ and the mask.
    dq, uncertainty : bool
        Build the DQ flags / the uncertainty (masking mode always builds DQ).
    """

    def __init__(self, cube: RTNCube, settings: EngineSettings, backend: BackendName = "numpy",
                 mode: Mode = "correct", dq: bool = True, uncertainty: bool = True) -> None:
        if mode not in ("correct", "mask"):
            raise ValueError(f"mode must be 'correct' or 'mask', got {mode!r}")
        self.mode = mode
        self.want_dq = bool(dq) or mode == "mask"
        self.want_uncertainty = bool(uncertainty)
        self.engine = RTNEngine(cube, settings, backend=backend, track_states=self.want_dq or self.want_uncertainty)
        self.model = FrameModel(cube, self.engine.params)
        self.engine.start_series()

    @property
    def cube_id(self) -> str:
        """Id of the cube (part) the series is corrected with."""
        return self.engine.cube_id

    def push(self, frame: np.ndarray, tag: Any = None) -> list[FrameProducts]:
        """Add the next frame (shape (ny, nx)); returns the frames that became ready, in order."""
        return [self._products(out) for out in self.engine.push(frame, tag=(frame, tag))]

    def finish(self) -> list[FrameProducts]:
        """End the series: the frames still pending."""
        return [self._products(out) for out in self.engine.finish()]

    def bias_offset_map(self) -> np.ndarray:
        """(ny, nx) float64 adu: the series' bias offset map (ALGORITHM.md section 5)."""
        return self.engine.bias_offset_map()

    def _products(self, out: CorrectedFrame) -> FrameProducts:
        frame, tag = out.tag
        data = out.data if self.mode == "correct" else frame
        dq, uncert, mask = self.model.products(data, out.states, out.corrected, self.mode, self.want_dq,
                                               self.want_uncertainty)
        return FrameProducts(out.index, data, dq, uncert, mask, out.counts, out.corrected, tag)
