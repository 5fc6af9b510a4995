"""rtnstream.starfield: the layout keeps every star's annulus free of other stars' light; the truth it states."""

import numpy as np
import pytest
from astropy.table import Table

from rtnstream.kernels.cube import read_cube
from rtnstream.starfield import ANNULUS_OUTER_FWHM, LIGHT_REACH_FWHM, StarField


@pytest.mark.parametrize("fwhm", [2.6, 6.0])
def test_stars_are_isolated_inside_the_frame(fwhm):
    field = StarField.make((200, 240), fwhm_px=fwhm, flux_range_e=(100, 1000), rtn_fraction=0.03, seed=1)
    pos = field.positions_xy
    gap = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(gap, np.inf)
    # a neighbour's light (out to 2 FWHM) stays outside every annulus (outer radius 3 FWHM)
    assert gap.min() >= (ANNULUS_OUTER_FWHM + LIGHT_REACH_FWHM) * fwhm
    reach = ANNULUS_OUTER_FWHM * fwhm
    assert pos.min() >= reach and pos[:, 0].max() <= 239 - reach and pos[:, 1].max() <= 199 - reach
    flux = field.scene.star_flux_e
    assert flux.min() == pytest.approx(100) and flux.max() == pytest.approx(1000)
    # the star light of the truth image sums to the stars' fluxes (PSF stamps of +-4 sigma)
    assert field.star_image_e().sum() == pytest.approx(flux.sum(), rel=1e-3)
    assert field.sensor.n_rtn == round(0.03 * 200 * 240)


def test_constant_sources_and_written_truth(tmp_path):
    field = StarField.make((96, 96), fwhm_px=2.6, sky_e=1.0, seed=2)
    paths = field.write(tmp_path, 5)
    table = Table.read(paths["catalog"])
    np.testing.assert_allclose(np.column_stack([table["x"], table["y"]]), field.positions_xy)
    assert read_cube(paths["cube"]).n_rtn == field.sensor.n_rtn
    assert np.array_equal(field.scene.flux_e(0), field.scene.flux_e(7))  # constant sources


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="fwhm_px"):
        StarField.make(fwhm_px=0)
    with pytest.raises(ValueError, match="flux_range_e"):
        StarField.make(flux_range_e=(100, 10))
    with pytest.raises(ValueError, match="sky_e"):
        StarField.make(sky_e=-1)
    with pytest.raises(ValueError, match="too small"):
        StarField.make((20, 20), fwhm_px=6.0)
    with pytest.raises(ValueError, match="n_frames"):
        StarField.make().stack(0)
