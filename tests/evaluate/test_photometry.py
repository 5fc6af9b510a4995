"""rtnstream.evaluate.photometry: aperture sums and annulus medians against photutils and astropy directly,
source finding and FWHM on a simulated star field."""

import numpy as np
import pytest
from astropy.stats import SigmaClip
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

from rtnstream.evaluate.photometry import (
    ANNULUS_FWHM,
    CLIP_ITERATIONS,
    CLIP_SIGMA,
    Apertures,
    estimate_fwhm,
    find_sources,
)
from rtnstream.starfield import StarField

SHAPE = (60, 70)
POSITIONS = np.array([[20.3, 18.7], [45.9, 40.2], [33.0, 29.5]])


@pytest.fixture
def image():
    rng = np.random.default_rng(5)
    return rng.normal(3.0, 2.0, SHAPE) + rng.poisson(2.0, SHAPE)


def test_aperture_sums_are_photutils_exact_sums(image):
    ap = Apertures(POSITIONS, 2.6, SHAPE)
    table = aperture_photometry(image, CircularAperture(POSITIONS, r=2.6), method="exact")
    annulus = CircularAnnulus(POSITIONS, r_in=ANNULUS_FWHM[0] * 2.6, r_out=ANNULUS_FWHM[1] * 2.6)
    clip = SigmaClip(sigma=CLIP_SIGMA, maxiters=CLIP_ITERATIONS, cenfunc="median", stdfunc="std")
    median = ApertureStats(image, annulus, sigma_clip=clip, sum_method="center").median
    np.testing.assert_allclose(ap.background(image), median, rtol=1e-12)
    expected = np.asarray(table["aperture_sum"]) - median * CircularAperture(POSITIONS, r=2.6).area
    np.testing.assert_allclose(ap.fluxes(image), expected, rtol=1e-10)


def test_masked_variant_leaves_the_excluded_pixels_out(image):
    excluded = np.zeros(SHAPE, bool)
    excluded[18:21, 19:22] = True  # in star 0's core
    excluded[40, 39] = True  # in star 1's annulus (6.9 px from its centre)
    ap = Apertures(POSITIONS, 2.6, SHAPE, excluded=excluded)
    sums = np.asarray(aperture_photometry(image, CircularAperture(POSITIONS, r=2.6), method="exact",
                                          mask=excluded)["aperture_sum"])
    annulus = CircularAnnulus(POSITIONS, r_in=ANNULUS_FWHM[0] * 2.6, r_out=ANNULUS_FWHM[1] * 2.6)
    clip = SigmaClip(sigma=CLIP_SIGMA, maxiters=CLIP_ITERATIONS, cenfunc="median", stdfunc="std")
    median = ApertureStats(image, annulus, mask=excluded, sigma_clip=clip, sum_method="center").median
    np.testing.assert_allclose(ap.fluxes(image, masked=True), sums - median * ap.area_masked_px, rtol=1e-10)
    assert ap.n_excluded.tolist() == [9, 0, 0]
    assert ap.annulus_size_masked[1] == ap.annulus_size[1] - 1
    # the bias offset map goes into the source image only: the background comes from the other image
    shifted = image + 5.0
    np.testing.assert_allclose(ap.fluxes(shifted, image), ap.fluxes(image) + 5.0 * ap.area_px, rtol=1e-10)


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="positions_xy"):
        Apertures(np.zeros((3, 3)), 2.6, SHAPE)
    with pytest.raises(ValueError, match="fwhm_px"):
        Apertures(POSITIONS, -1.0, SHAPE)
    with pytest.raises(ValueError, match="excluded"):
        Apertures(POSITIONS, 2.6, SHAPE, excluded=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="source_image"):
        Apertures(POSITIONS, 2.6, SHAPE).fluxes(np.zeros((3, 3)))


@pytest.mark.parametrize("fwhm", [2.6, 6.0])
def test_sources_and_fwhm_found_on_a_simulated_field(fwhm):
    field = StarField.make((160, 160), fwhm_px=fwhm, flux_range_e=(2000, 20000), sky_e=2.0, seed=2)
    raw, _, _ = field.stack(16)
    cube = field.cube()
    median_e = (np.median(raw, axis=0) - cube.meanbias_adu) * cube.gain_e_per_adu
    found = find_sources(median_e, fwhm)
    truth = field.positions_xy
    dist = np.hypot(*(found[:, None, :] - truth[None, :, :]).transpose(2, 0, 1))
    assert found.shape[0] == truth.shape[0]
    # centroids of stars of >= 2000 e- on a 16-frame median: a few hundredths of a pixel, 0.2 px is loose
    assert dist.min(axis=1).max() < 0.2
    # the scene's PSF is sampled at pixel centres (not integrated): the fitted FWHM within 5 %
    assert estimate_fwhm(median_e - np.median(median_e), found, 3.0) == pytest.approx(fwhm, rel=0.05)
