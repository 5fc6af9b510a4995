"""The fit mapped on dask.distributed (calibration/distributed.py): a real LocalCluster, the same cube."""

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.distributed import dask_executor, parse_scheduler
from rtnstream.calibration.fit import fit_bias_stack
from rtnstream.cli import main
from rtnstream.kernels.cube import read_cube
from rtnstream.kernels.simulate import SensorModel

pytest.importorskip("distributed")

SHAPE = (48, 40)
LIMIT = 600_000  # bytes: bands of 12 rows (300 frames of 40 pixels, 2 bytes each: 24 kB a row)
PLANES = ("mu_adu", "delta_e", "sigma_e", "frac_c", "frac_lo", "frac_hi", "lammax_e", "meanbias_adu",
          "readnoise_e", "dq")


@pytest.fixture(scope="module")
def sensor():
    return SensorModel.random(SHAPE, rtn_fraction=0.08, seed=31)


@pytest.fixture(scope="module")
def bias_files(sensor, tmp_path_factory):
    data, _, _ = sensor.stack(300, seed=32)
    folder = tmp_path_factory.mktemp("bias")
    paths = []
    for k, part in enumerate(np.array_split(data, 3)):  # three 3-D files: bands span files
        paths.append(folder / f"bias_{k}.fits")
        fits.PrimaryHDU(part, header=fits.Header({"DATE-OBS": f"2025-03-01T20:0{k}:00"})).writeto(paths[-1])
    return paths


def assert_same_cube(a, b):
    for attr in PLANES:
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=attr)
    assert a.cube_id == b.cube_id and a.n_rtn == b.n_rtn > 0


def test_dask_fit_on_a_local_cluster_equals_the_one_process_fit(bias_files, sensor, capsys):
    # a small memory limit: several bands per pass, shared by the two workers
    one = fit_bias_stack(bias_files, sensor.gain_e_per_adu, memory_limit_bytes=LIMIT)
    dask = fit_bias_stack(bias_files, sensor.gain_e_per_adu, memory_limit_bytes=LIMIT, scheduler="local:2",
                          progress=True)
    assert dask.report["memory"]["moments_rows"] <= SHAPE[0] // 4  # four bands or more for two workers
    assert_same_cube(one.cube, dask.cube)
    assert dask.report["memory"]["workers"] == 2
    assert "pass 3/3 fit" in capsys.readouterr().err  # progress shown


def test_cli_scheduler_option_writes_the_same_cube(bias_files, sensor, tmp_path):
    args = ["fit", *map(str, bias_files), "--gain-e-per-adu", str(sensor.gain_e_per_adu), "--no-plots",
            "--no-progress", "--memory-limit", str(LIMIT)]
    assert main([*args, "-o", str(tmp_path / "one.fits")]) == 0
    assert main([*args, "-o", str(tmp_path / "dask.fits"), "--scheduler", "local:2"]) == 0
    assert_same_cube(read_cube(tmp_path / "one.fits"), read_cube(tmp_path / "dask.fits"))


def test_a_running_scheduler_is_joined_by_its_address(bias_files, sensor):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with dask_executor(cluster.scheduler_address) as bands:
            assert bands.n_workers == 1
        fit = fit_bias_stack(bias_files, sensor.gain_e_per_adu, scheduler=cluster.scheduler_address)
    assert_same_cube(fit.cube, fit_bias_stack(bias_files, sensor.gain_e_per_adu).cube)


@pytest.mark.parametrize("value, message", [("local:0", "N >= 1"), ("local", "local:N"), ("", "scheduler"),
                                            ("local:x", "local:N")])
def test_bad_scheduler_is_refused_naming_it(value, message):
    with pytest.raises(ValueError, match=message):
        parse_scheduler(value)


def test_workers_and_scheduler_together_are_refused(bias_files, sensor):
    with pytest.raises(ValueError, match="workers or scheduler"):
        fit_bias_stack(bias_files, sensor.gain_e_per_adu, workers=2, scheduler="local:2")
