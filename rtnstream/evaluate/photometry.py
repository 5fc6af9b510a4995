"""Aperture photometry of fixed sources on a series of frames: photutils apertures, median background annuli.

:func:`find_sources` finds stars on a (median) frame with photutils' DAOStarFinder; :class:`Apertures` turns
photutils' exact-overlap circular apertures (radius = FWHM) and centre-method annuli into per-star pixel
weights once, so each frame's photometry is a sparse product (the same sums ``aperture_photometry`` gives,
checked by the tests) and a median per annulus. In the masked variant the RTN pixels are left out of both
the aperture and the annulus (the RTN paper's masking). The bias offset map is applied by the caller to the
source image only, never to the background image (ALGORITHM.md section 5).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse

__all__ = ["ANNULUS_FWHM", "Apertures", "find_sources", "estimate_fwhm"]

#: inner and outer radius of the background annulus, in FWHM (ours: the RTN paper's values were lost)
ANNULUS_FWHM = (2.0, 3.0)
#: the annulus median is taken after this many 3-sigma clipping passes (as astropy's SigmaClip with the
#: standard deviation about the median), so residual jumps and cosmic rays do not move it
CLIP_SIGMA, CLIP_ITERATIONS = 3.0, 3


def _check_positions(positions_xy: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions_xy, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] == 0:
        raise ValueError(f"positions_xy must have shape (n_stars, 2) with n_stars >= 1, got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions_xy must be finite")
    return pos


def _weights(masks, shape: tuple[int, int]) -> sparse.csr_matrix:
    """Sparse (n_stars, ny*nx) matrix of photutils ApertureMask weights (the part inside the frame)."""
    rows, cols, vals = [], [], []
    ny, nx = shape
    for k, mask in enumerate(masks):
        slices = mask.get_overlap_slices(shape)
        big, small = slices if slices is not None else (None, None)
        if big is None:
            continue
        data = mask.data[small]
        yy, xx = np.mgrid[big[0], big[1]]
        keep = data > 0
        rows.append(np.full(int(keep.sum()), k))
        cols.append((yy * nx + xx)[keep])
        vals.append(data[keep])
    if not rows:
        return sparse.csr_matrix((len(masks), ny * nx))
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(len(masks), ny * nx))


def _row_median(values: np.ndarray) -> np.ndarray:
    """Median of each row of ``values`` (n, m) ignoring NaN (NaN for a row without a number): a sort, much
    faster than :func:`numpy.nanmedian` on many short rows."""
    ordered = np.sort(values, axis=1)  # NaN last
    n = np.sum(~np.isnan(values), axis=1)
    rows = np.arange(values.shape[0])
    lo, hi = np.maximum((n - 1) // 2, 0), np.maximum(n // 2, 0)
    out = 0.5 * (ordered[rows, lo] + ordered[rows, hi])
    out[n == 0] = np.nan
    return out


def _drop_columns(m: sparse.csr_matrix, drop: np.ndarray) -> sparse.csr_matrix:
    """``m`` with the entries of the columns where ``drop`` (bool, one per column) is true removed."""
    out = m.copy()
    out.data[drop[out.indices]] = 0.0
    out.eliminate_zeros()
    return out


def _padded_index(m: sparse.csr_matrix, columns: np.ndarray) -> np.ndarray:
    """(n_rows, k) int64: each row's non-zero columns as positions in the sorted ``columns``, -1 past its end."""
    counts = np.diff(m.indptr)
    out = np.full((m.shape[0], max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    for k in range(m.shape[0]):
        idx = m.indices[m.indptr[k] : m.indptr[k + 1]]
        out[k, : idx.size] = np.searchsorted(columns, idx)
    return out


class Apertures:
    """Source apertures and background annuli of fixed stars on frames of one shape.

    Only the pixels of some aperture or annulus are ever read (:attr:`pixels`): a frame's photometry costs
    those pixels, not the frame (:meth:`gather`, then :meth:`fluxes_of`).

    Parameters
    ----------
    positions_xy : numpy.ndarray, shape (n_stars, 2), pixel
        (x, y) of each star (photutils' order).
    fwhm_px : float
        PSF full width at half maximum, pixel: the aperture radius.
    shape : (ny, nx)
        Frame shape.
    excluded : numpy.ndarray, shape (ny, nx), bool, optional
        Pixels left out in the masked variant (the RTN pixels).
    annulus_fwhm : (float, float)
        Inner and outer annulus radius, in FWHM.

    Attributes
    ----------
    radius_px : float
    pixels : numpy.ndarray, shape (n_pixels,), int64
        Flat indices (ascending) of the pixels in some aperture or annulus.
    weights, weights_masked : scipy.sparse.csr_matrix, shape (n_stars, n_pixels)
        Exact-overlap aperture weights in [0, 1] over :attr:`pixels`; the masked one with the excluded pixels
        at 0.
    area_px, area_masked_px : numpy.ndarray, shape (n_stars,)
        Sum of the weights.
    annulus_size, annulus_size_masked : numpy.ndarray, shape (n_stars,), int
        Pixels in each annulus (centre method), all or not excluded.
    n_excluded : numpy.ndarray, shape (n_stars,), int
        Excluded pixels that overlap each aperture.
    """

    def __init__(self, positions_xy: np.ndarray, fwhm_px: float, shape: tuple[int, int],
                 excluded: np.ndarray | None = None, annulus_fwhm: tuple[float, float] = ANNULUS_FWHM) -> None:
        from photutils.aperture import CircularAnnulus, CircularAperture

        pos = _check_positions(positions_xy)
        if not np.isfinite(fwhm_px) or fwhm_px <= 0:
            raise ValueError(f"fwhm_px must be a positive number, got {fwhm_px!r}")
        r_in, r_out = annulus_fwhm
        if not 1.0 <= r_in < r_out:
            raise ValueError(f"annulus_fwhm must be (inner, outer) with 1 <= inner < outer, got {annulus_fwhm!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        npix = self.shape[0] * self.shape[1]
        excl = np.zeros(npix, bool) if excluded is None else np.asarray(excluded, bool).reshape(-1)
        if excl.size != npix:
            raise ValueError(f"excluded must have shape {self.shape}, got {np.shape(excluded)}")
        self.positions_xy = pos
        self.radius_px = float(fwhm_px)
        full = _weights(CircularAperture(pos, r=self.radius_px).to_mask(method="exact"), self.shape)
        annuli = CircularAnnulus(pos, r_in=r_in * self.radius_px, r_out=r_out * self.radius_px)
        ann = _weights(annuli.to_mask(method="center"), self.shape)
        self.pixels = np.union1d(full.indices, ann.indices).astype(np.int64)
        drop = excl[self.pixels]
        self.weights = full[:, self.pixels].tocsr()
        self.weights_masked = _drop_columns(self.weights, drop)
        self.area_px = np.asarray(self.weights.sum(axis=1)).ravel()
        self.area_masked_px = np.asarray(self.weights_masked.sum(axis=1)).ravel()
        self.n_excluded = np.diff(self.weights.indptr) - np.diff(self.weights_masked.indptr)
        ann_masked = _drop_columns(ann, excl)
        self._annulus = _padded_index(ann, self.pixels)
        self._annulus_masked = _padded_index(ann_masked, self.pixels)
        self.annulus_size = np.diff(ann.indptr)
        self.annulus_size_masked = np.diff(ann_masked.indptr)

    @property
    def n_stars(self) -> int:
        return int(self.positions_xy.shape[0])

    def gather(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """The values of :attr:`pixels` of ``image`` (ny, nx), as float64, shape (n_pixels,)."""
        if np.shape(image) != self.shape:
            raise ValueError(f"{name} must have shape {self.shape}, got {np.shape(image)}")
        return np.asarray(image).reshape(-1)[self.pixels].astype(np.float64)

    def background_of(self, values: np.ndarray, masked: bool = False) -> np.ndarray:
        """3-sigma clipped median of gathered ``values`` (n_pixels,) in each star's annulus, shape (n_stars,),
        their unit; NaN for an annulus with no pixel. The clipping drops residual jumps and cosmic rays."""
        index = self._annulus_masked if masked else self._annulus
        ring = np.where(index >= 0, np.asarray(values, np.float64)[np.maximum(index, 0)], np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an empty annulus: NaN
            for _ in range(CLIP_ITERATIONS):
                median = _row_median(ring)[:, None]
                spread = np.nanstd(ring, axis=1, keepdims=True)
                ring = np.where(np.abs(ring - median) <= CLIP_SIGMA * spread, ring, np.nan)
            return _row_median(ring)

    def background(self, image: np.ndarray, masked: bool = False) -> np.ndarray:
        """:meth:`background_of` the pixels of ``image`` (ny, nx)."""
        return self.background_of(self.gather(image), masked)

    def fluxes_of(self, source: np.ndarray, background: np.ndarray | None = None, masked: bool = False
                  ) -> np.ndarray:
        """Background-subtracted aperture sums of gathered values, shape (n_stars,), their unit.

        Parameters
        ----------
        source : numpy.ndarray, shape (n_pixels,)
            Bias-subtracted values for the apertures (with the bias offset map, for corrected frames).
        background : numpy.ndarray, shape (n_pixels,), optional
            Bias-subtracted values for the annuli (without the offset map); default ``source``.
        masked : bool
            Leave the excluded pixels out of apertures and annuli.
        """
        w, area = (self.weights_masked, self.area_masked_px) if masked else (self.weights, self.area_px)
        return w @ source - self.background_of(source if background is None else background, masked) * area

    def fluxes(self, source_image: np.ndarray, background_image: np.ndarray | None = None,
               masked: bool = False) -> np.ndarray:
        """:meth:`fluxes_of` the pixels of ``source_image`` (ny, nx) and ``background_image`` (ny, nx)."""
        source = self.gather(source_image, "source_image")
        background = None if background_image is None else self.gather(background_image, "background_image")
        return self.fluxes_of(source, background, masked)


def estimate_fwhm(image: np.ndarray, positions_xy: np.ndarray, guess_px: float = 3.0) -> float:
    """Median FWHM (pixel) of the sources at ``positions_xy`` on a background-subtracted ``image``, fitted with
    photutils' :func:`~photutils.psf.fit_fwhm` (circular Gaussian)."""
    from photutils.psf import fit_fwhm

    pos = _check_positions(positions_xy)
    size = int(2 * np.ceil(1.5 * guess_px) + 1)
    fwhm = np.asarray(fit_fwhm(np.asarray(image, np.float64), xypos=pos, fwhm=guess_px, fit_shape=size))
    fwhm = fwhm[np.isfinite(fwhm) & (fwhm > 0)]
    if fwhm.size == 0:
        raise ValueError("no source gave a FWHM: pass --fwhm")
    return float(np.median(fwhm))


def find_sources(image: np.ndarray, fwhm_px: float, threshold_sigma: float = 5.0, max_sources: int | None = None,
                 annulus_fwhm: tuple[float, float] = ANNULUS_FWHM) -> np.ndarray:
    """Stars on a bias-subtracted (median) frame, with photutils' DAOStarFinder.

    Kept are sources whose background annulus lies inside the frame and with no brighter source closer than
    the aperture radius plus the annulus' outer radius (their light would bias each other's photometry).

    Parameters
    ----------
    image : numpy.ndarray, shape (ny, nx), electron
    fwhm_px : float
    threshold_sigma : float
        Detection threshold above the background, in units of the sigma-clipped background standard deviation.
    max_sources : int, optional
        Keep only the brightest this many.

    Returns
    -------
    numpy.ndarray, shape (n_sources, 2), pixel
        (x, y) of each source, brightest first.
    """
    from astropy.stats import sigma_clipped_stats
    from photutils.detection import DAOStarFinder

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    _, median, std = sigma_clipped_stats(img, sigma=3.0)
    found = DAOStarFinder(threshold=threshold_sigma * max(float(std), 1e-12), fwhm=fwhm_px)(img - median)
    if found is None or len(found) == 0:
        return np.zeros((0, 2))
    xcol, ycol = ("x_centroid", "y_centroid") if "x_centroid" in found.colnames else ("xcentroid", "ycentroid")
    order = np.argsort(-np.asarray(found["flux"], np.float64))
    pos = np.column_stack([np.asarray(found[xcol], np.float64), np.asarray(found[ycol], np.float64)])[order]
    reach = annulus_fwhm[1] * fwhm_px
    ny, nx = img.shape
    inside = ((pos[:, 0] >= reach) & (pos[:, 0] <= nx - 1 - reach) & (pos[:, 1] >= reach)
              & (pos[:, 1] <= ny - 1 - reach))
    kept: list[int] = []
    for k in range(pos.shape[0]):
        near = [j for j in range(k) if np.hypot(*(pos[k] - pos[j])) < reach + fwhm_px]
        if inside[k] and not near:
            kept.append(k)
    out = pos[kept]
    return out[:max_sources] if max_sources is not None else out
