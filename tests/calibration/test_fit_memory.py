"""The fit's memory (issue 15): the whole-sensor maps count in ``memory_limit_bytes``, the bands get what
they leave, and the peak does not grow with the frame count (the bands shrink instead)."""

import tracemalloc

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.fit import MAP_BYTES_PER_PIXEL, fit_bias_stack, plan_bands
from rtnstream.calibration.stacks import FitsStack
from rtnstream.kernels.lut import get_table
from rtnstream.kernels.simulate import SensorModel

SHAPE = (48, 64)


@pytest.fixture(scope="module")
def sensor():
    return SensorModel.random(SHAPE, rtn_fraction=0.05, seed=3)


@pytest.fixture(scope="module")
def stack_path(sensor, tmp_path_factory):
    data, _, _ = sensor.stack(240, seed=2)
    path = tmp_path_factory.mktemp("stack") / "bias.fits"
    fits.PrimaryHDU(data, header=fits.Header({"IMAGETYP": "Bias"})).writeto(path)
    return path


def test_peak_stays_under_the_limit_maps_included_for_any_frame_count(sensor, stack_path):
    npix = SHAPE[0] * SHAPE[1]
    limit = MAP_BYTES_PER_PIXEL * npix + 600_000
    table = get_table(0.003)  # a shared cached object, not part of the fit's memory
    peaks, rows, cubes = {}, {}, {}
    for n in (120, 240):
        tracemalloc.start()
        try:
            res = fit_bias_stack([stack_path], sensor.gain_e_per_adu, n_frames=n, memory_limit_bytes=limit)
            _, peaks[n] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        rows[n] = res.report["memory"]["moments_rows"]
        cubes[n] = res.cube
        # lambda_max's threshold-table-sized temporaries are the one thing on top (about 3 table planes)
        assert peaks[n] < limit + 3 * table.q_hi.nbytes, (n, peaks[n], limit)
    # twice the frames, half the rows a band: the bands, not the peak, follow the frame count
    assert rows[240] < rows[120] < SHAPE[0]
    assert rows[240] * 240 * SHAPE[1] * 2 <= plan_bands(FitsStack([stack_path]), 240, 240, limit).band_bytes
    assert cubes[240].n_rtn > 0.5 * sensor.n_rtn  # a real fit, not an empty one


def test_a_limit_the_maps_alone_exceed_is_refused_naming_the_parameter(stack_path):
    maps = MAP_BYTES_PER_PIXEL * SHAPE[0] * SHAPE[1]
    with pytest.raises(ValueError, match=r"memory_limit_bytes=.* too small: the whole-sensor maps"):
        plan_bands(FitsStack([stack_path]), 240, 240, maps)
    with pytest.raises(ValueError, match=r"memory_limit_bytes=.* too small: one row"):
        plan_bands(FitsStack([stack_path]), 240, 240, maps + 1000)


def test_maps_are_held_at_the_cube_precision(sensor, stack_path):
    res = fit_bias_stack([stack_path], sensor.gain_e_per_adu, n_frames=120)
    assert res.maps["mean_adu"].dtype == res.maps["read_noise_e"].dtype == res.maps["a2"].dtype == np.float32
    assert res.maps["read_noise_e"] is res.cube.readnoise_e and res.maps["mean_adu"] is res.cube.meanbias_adu
