"""The paper's data-volume trick: ``fit --prescreen N``, compact bias stacks and ``rtnstream bias-collect``.

Ground truth is a :class:`SensorModel`; the reference is the full fit (calibration/fit.py) of the same
FITS files. Why the prescreened candidates are essentially the full fit's: the full fit already runs its
Anderson-Darling test on the first ``ad_frames = 400`` frames, so with ``prescreen >= 400`` the A^2 map is
the same bit for bit; only the read-noise rule (``std > median(std)``) sees 400 frames instead of all, and
a pixel's std from 400 frames has a relative sampling error of about ``1 / sqrt(2 * 400) = 3.5 %``: only
pixels within a few per cent of the median can change side. RTN pixels lie far above the median except the
smallest-Delta ones, so at most a few in a thousand RTN pixels move; the pixels that do move are mostly
normal pixels that failed the AD test by chance (1 % of them) and lie near the median.
"""

import json
import threading
import time

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.compact import CompactStack, is_compact_stack
from rtnstream.calibration.fit import FitSettings, fit_bias_stack
from rtnstream.calibration.prescreen import collect_stack, read_volume
from rtnstream.calibration.stacks import FitsStack
from rtnstream.cli import main
from rtnstream.kernels.cube import read_cube
from rtnstream.kernels.simulate import SensorModel

SHAPE = (60, 60)
N_FRAMES = 1200
SCREEN = 400
PLANES = ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e", "meanbias_adu",
          "readnoise_e", "dq")


def write_run(folder, data: np.ndarray, gain_e_per_adu: float) -> list:
    """``data`` as a 3D cube of 300 frames, 50 single frames, then 3D cubes of 425 (bands span files)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, k = [], 0
    for size in (300, *[1] * 50, 425, 425):
        part = data[k : k + size]
        hdr = fits.Header({"INSTRUME": "simcam", "EGAIN": gain_e_per_adu,
                           "DATE-OBS": f"2025-03-01T20:{k // 60:02d}:{k % 60:02d}.000"})
        paths.append(folder / f"bias_{len(paths):03d}.fits")
        fits.PrimaryHDU(part[0] if size == 1 else part, header=hdr).writeto(paths[-1])
        k += size
    assert k == data.shape[0]
    return paths


@pytest.fixture(scope="module")
def sensor():
    return SensorModel.random(SHAPE, rtn_fraction=0.05, one_sided_fraction=0.3, seed=41)


@pytest.fixture(scope="module")
def run_files(sensor, tmp_path_factory):
    data, _, _ = sensor.stack(N_FRAMES, seed=42)
    return write_run(tmp_path_factory.mktemp("run"), data, sensor.gain_e_per_adu)


@pytest.fixture(scope="module")
def full(run_files):
    return fit_bias_stack(run_files, memory_limit_bytes=4 << 20)  # several bands of rows


@pytest.fixture(scope="module")
def pre(run_files):
    return fit_bias_stack(run_files, memory_limit_bytes=4 << 20, prescreen=SCREEN)


def assert_same_cube(a, b):
    for attr in PLANES:
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=attr)
    assert a.cube_id == b.cube_id and a.n_rtn == b.n_rtn > 0


def test_prescreen_finds_the_full_fits_candidates(full, pre, sensor):
    np.testing.assert_array_equal(pre.maps["a2"], full.maps["a2"])  # the AD test: the first 400 frames in both
    fc, pc = full.maps["candidate"], pre.maps["candidate"]
    assert fc.sum() > 150
    # only the read-noise rule differs (400 frames' std against all frames'): a few pixels at the median
    flipped = fc != pc
    assert flipped.sum() <= 0.05 * fc.sum()
    near = full.maps["read_noise_e"] / full.report["read_noise_e"]["candidate_threshold_median"]
    assert np.all(np.abs(near[flipped] - 1) < 0.1)  # within 3 sampling errors (3.5 %) of the median
    rtn = np.zeros(fc.size, bool)
    rtn[sensor.rtn_index] = True
    missed = np.sum(rtn & fc.ravel() & ~pc.ravel())
    assert missed <= 0.01 * rtn.sum()  # RTN pixels the screen misses and the full fit finds
    assert pre.report["prescreen"]["frames"] == SCREEN and pre.report["n_frames"] == N_FRAMES


def test_prescreen_parameters_are_the_full_fits(full, pre, sensor):
    fa, pa = full.cube.rtn_mask, pre.cube.rtn_mask
    found_full = fa.ravel()[sensor.rtn_index]
    found_pre = pa.ravel()[sensor.rtn_index]
    assert found_pre.mean() >= 0.95 and found_pre.sum() >= found_full.sum() - 0.01 * sensor.rtn_index.size
    both = fa & pa
    # a candidate's values are all its frames' in both fits, and its moments the same integer sums: the fits
    # are the same numbers up to the order of EM's sums over the candidates fitted together (1e-15 measured)
    for attr in ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e", "meanbias_adu",
                 "readnoise_e"):
        np.testing.assert_allclose(getattr(pre.cube, attr)[both], getattr(full.cube, attr)[both], rtol=1e-12,
                                   err_msg=attr)
    # and against the truth, as the full fit (tests/calibration/test_fit.py)
    pix = sensor.rtn_index[found_pre]
    rel_delta = pre.cube.delta_e.ravel()[pix] / sensor.delta_e[found_pre] - 1
    assert np.median(np.abs(rel_delta)) < 0.03
    # other pixels keep the screen's maps: 400 frames' mean, read noise within its sampling error (3.5 %)
    other = ~pre.maps["candidate"]
    rn = pre.cube.readnoise_e[other] / full.cube.readnoise_e[other] - 1
    assert abs(np.median(rn)) < 0.01 and np.median(np.abs(rn)) < 0.035


def test_compact_stack_gives_the_prescreened_cube_and_is_10x_smaller(run_files, pre, tmp_path):
    compact = collect_stack(FitsStack(run_files), SCREEN, tmp_path / "compact.fits")
    assert is_compact_stack(compact.path) and not is_compact_stack(run_files[0])
    assert compact.n_frames == N_FRAMES and compact.n_candidates == pre.maps["candidate"].sum()
    # the stored values are the frames' own
    first = fits.getdata(run_files[0])
    np.testing.assert_array_equal(compact.values(n_frames=300), first.reshape(300, -1)[:, compact.screen.index])
    assert compact.primary_header["INSTRUME"] == "simcam" and compact.headers[-1]["DATE-OBS"]
    fitted = fit_bias_stack([compact.path], memory_limit_bytes=4 << 20)
    assert_same_cube(fitted.cube, pre.cube)
    assert fitted.report["gain"]["source"] == pre.report["gain"]["source"] != "option"  # EGAIN kept
    # measured size: the formula (values + 32-byte screen maps + 8-byte index) within the FITS blocks
    k, npix = compact.n_candidates, SHAPE[0] * SHAPE[1]
    formula = read_volume(N_FRAMES, SCREEN, SHAPE, k, 2, index=compact.screen.index)["compact_stack"]
    assert formula <= compact.nbytes() <= formula + 7 * 2880 + 4 * 2880 + len(run_files) * 400  # headers
    full_bytes = N_FRAMES * npix * 2
    assert full_bytes / compact.nbytes() >= 10
    # a 5000-frame run with this candidate fraction: reduction 5000 * 2 / (32 + 5000 * 2 * k / npix) >= 10x
    assert 5000 * 2 / (32 + 5000 * 2 * k / npix + 8 * k / npix) >= 10


def test_bias_collect_cli_from_a_folder_then_fit(run_files, pre, tmp_path, capsys):
    out = tmp_path / "c.fits"
    assert main(["bias-collect", str(run_files[0].parent), "-o", str(out), "--screen", str(SCREEN),
                 "--no-progress"]) == 0
    assert "x less than" in capsys.readouterr().out
    assert main(["fit", str(out), "-o", str(tmp_path / "cube.fits"), "--no-plots", "--no-progress",
                 "--memory-limit", str(4 << 20)]) == 0
    assert_same_cube(read_cube(tmp_path / "cube.fits"), pre.cube)
    assert main(["fit", *map(str, run_files), "--prescreen", str(SCREEN), "-o", str(tmp_path / "pre.fits"),
                 "--no-progress", "--memory-limit", str(4 << 20), "--plots", str(tmp_path / "plots")]) == 0
    assert_same_cube(read_cube(tmp_path / "pre.fits"), pre.cube)
    report = json.loads((tmp_path / "pre_report.json").read_text())
    assert report["prescreen"]["frames"] == SCREEN and report["prescreen"]["bytes"]["values"] > 0
    assert len(list((tmp_path / "plots").glob("*.png"))) >= 4
    assert main(["bias-collect", str(run_files[0].parent), "-o", str(out), "--screen", "400"]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err


def test_bias_collect_watches_a_folder_as_frames_arrive(run_files, tmp_path):
    """Files appear one by one (renamed in whole, as camera software does); --frames ends the run; files
    are removed once their values are kept."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    out = tmp_path / "watched.fits"
    rc = []
    thread = threading.Thread(target=lambda: rc.append(main(
        ["bias-collect", str(folder), "--watch", "--frames", "800", "--screen", str(SCREEN), "-o", str(out),
         "--settle", "0.05", "--poll", "0.02", "--idle", "20", "--no-progress", "--remove-taken"])))
    thread.start()
    try:
        for path in run_files:
            tmp = folder / f".{path.name}.part"
            tmp.write_bytes(path.read_bytes())
            tmp.rename(folder / path.name)
            time.sleep(0.005)
    finally:
        thread.join(60)
    assert rc == [0]
    compact = CompactStack(out)
    assert compact.n_frames == 800  # the last cube cut at --frames
    # --remove-taken: every file whose values are kept is gone; the one cut at --frames stays
    assert sorted(p.name for p in folder.iterdir()) == [run_files[-1].name]
    expected = collect_stack(FitsStack(run_files).subset(range(800)), SCREEN, tmp_path / "list.fits")
    np.testing.assert_array_equal(compact.values(), expected.values())
    np.testing.assert_array_equal(compact.screen.index, expected.screen.index)


def test_iter_values_are_the_frames_values(tmp_path, sensor):
    """Memory-mapped values of plain images equal whole-frame reads, for every pixel type; compressed and
    scaled images fall back to whole-frame reads."""
    data, _, _ = sensor.stack(3, seed=5)
    index = np.array([0, 7, 100, SHAPE[0] * SHAPE[1] - 1])
    paths = []
    for k, dtype in enumerate((np.uint16, np.int16, np.int32, np.float32)):
        paths.append(tmp_path / f"f{k}.fits")
        fits.PrimaryHDU(data.astype(dtype)).writeto(paths[-1])
        stack = FitsStack([paths[-1]])
        got = np.stack(list(stack.iter_values(index)))
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, data.astype(dtype).reshape(3, -1)[:, index])
    comp = tmp_path / "comp.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data[0])]).writeto(comp)
    np.testing.assert_array_equal(next(FitsStack([comp]).iter_values(index)), data[0].reshape(-1)[index])


def test_bad_arguments_name_the_parameter(run_files, tmp_path):
    with pytest.raises(ValueError, match="prescreen"):
        fit_bias_stack(run_files, prescreen=20)
    with pytest.raises(ValueError, match="prescreen"):
        fit_bias_stack(run_files, prescreen=N_FRAMES)
    with pytest.raises(ValueError, match="one process"):
        fit_bias_stack(run_files, prescreen=SCREEN, workers=2)
    compact = collect_stack(FitsStack(run_files).subset(range(500)), SCREEN, tmp_path / "c.fits")
    with pytest.raises(ValueError, match="settings"):
        fit_bias_stack(compact, settings=FitSettings(a2_critical=2.0))
    with pytest.raises(ValueError, match="screened on 400"):
        fit_bias_stack(compact, prescreen=300)
    with pytest.raises(ValueError, match="n_frames"):
        fit_bias_stack(compact, n_frames=100)
    with pytest.raises(ValueError, match="not a compact"):
        CompactStack(run_files[0])
    assert main(["bias-collect", *map(str, run_files[:2]), "-o", str(tmp_path / "x.fits"), "--frames", "100"]) == 2
    assert main(["bias-collect", *map(str, run_files[:2]), "-o", str(tmp_path / "x.fits"), "--screen", "400"]) == 2
    assert not (tmp_path / "x.fits").exists() and not list(tmp_path.glob("x.fits.*"))


def test_compact_writer_memory_does_not_grow_with_the_run(tmp_path):
    """Values are spooled to disk: 2000 frames of 5000 candidates (20 MB) written with a peak of a few MB."""
    import tracemalloc

    from rtnstream.calibration.compact import SCREEN_SETTINGS, CompactStackWriter, Screen

    k, n = 5000, 2000
    maps = np.zeros((100, 100))
    screen = Screen(maps, maps, maps, np.full((100, 100), 400), np.zeros(400, np.int64),
                    np.arange(0, 10000, 2)[:k], {name: getattr(FitSettings(), name) for name in SCREEN_SETTINGS})
    rng = np.random.default_rng(1)
    block = rng.integers(0, 65536, size=(50, k), dtype=np.uint16)
    tracemalloc.start()
    writer = CompactStackWriter(tmp_path / "c.fits", screen, np.uint16)
    for i in range(n):
        writer.add_values(block[i % 50], None, f"f{i}")
    writer.close()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8e6  # the values alone are 20 MB; they are streamed in 1 MB pieces
    compact = CompactStack(tmp_path / "c.fits")
    got = compact.values(0, k, 100)
    np.testing.assert_array_equal(got, np.concatenate([block, block]))  # uint16 round trip, top bit included
    assert got.dtype == np.uint16 and compact.n_frames == n


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64])
def test_compact_values_round_trip_every_pixel_type(tmp_path, dtype):
    from rtnstream.calibration.compact import SCREEN_SETTINGS, CompactStackWriter, Screen

    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    values = np.array([[info.min, info.max, 0, 1, -1 if info.min < 0 else 2]] * 3, dtype=dtype)
    maps = np.zeros((2, 3))
    screen = Screen(maps, maps, maps, np.zeros((2, 3), np.int64), np.zeros(2, np.int64), np.array([0, 1, 2, 4, 5]),
                    {name: getattr(FitSettings(), name) for name in SCREEN_SETTINGS})
    writer = CompactStackWriter(tmp_path / "c.fits", screen, np.dtype(dtype))
    for row in values:
        writer.add_values(row, fits.Header({"DATE-OBS": "2025-03-01T20:00:00"}), "f")
    compact = CompactStack(writer.close())
    got = compact.values()
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, values)
    np.testing.assert_array_equal(compact.values(1, 3, 2), values[:2, 1:3])
    with fits.open(compact.path) as hdul:  # a valid FITS file that astropy reads the same
        np.testing.assert_array_equal(hdul["VALUES"].data, values)


def test_compact_writer_refuses_an_unsupported_type_and_needs_the_screened_frames(tmp_path):
    from rtnstream.calibration.compact import SCREEN_SETTINGS, CompactStackWriter, Screen

    maps = np.zeros((2, 3))
    screen = Screen(maps, maps, maps, np.zeros((2, 3), np.int64), np.zeros(2, np.int64), np.array([0]),
                    {name: getattr(FitSettings(), name) for name in SCREEN_SETTINGS})
    with pytest.raises(ValueError, match="dtype"):
        CompactStackWriter(tmp_path / "c.fits", screen, np.dtype(np.complex64))
    writer = CompactStackWriter(tmp_path / "c.fits", screen, np.dtype(np.uint16))
    writer.add_values(np.array([1], np.uint16), None, "f")
    with pytest.raises(ValueError, match="screened"):
        writer.close()
    assert not list(tmp_path.iterdir())  # spool removed, nothing written
