"""``rtnstream correct --scheduler``: many series on a real dask LocalCluster, the one-process outputs exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.cli import main
from rtnstream.kernels.cube import read_cube, write_cube
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.simulate import Scene, SensorModel
from rtnstream.offline import correct_files

pytest.importorskip("distributed")

SHAPE = (32, 40)
N_SERIES, N_FRAMES = 4, 12
# cards that hold when or where a file was written, not what it holds
_WHEN = {"DATE", "CHECKSUM", "DATASUM"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A night of four series (an hour apart, 10 s cadence): 2-D frames, one series a 3-D stack; the cube."""
    sensor = SensorModel.random(SHAPE, rtn_fraction=0.08, seed=21)
    root = tmp_path_factory.mktemp("night")
    cube_path = root / "cube.fits"
    write_cube(sensor.true_cube(), cube_path)
    inputs = root / "in"
    inputs.mkdir()
    for s in range(N_SERIES):
        data, _, _ = sensor.stack(N_FRAMES, Scene.make("stars", SHAPE, n_stars=3, seed=s), seed=100 + s)
        times = [f"2025-03-01T{20 + s:02d}:{10 * k // 60:02d}:{10 * k % 60:02d}" for k in range(N_FRAMES)]
        if s == 2:  # one series as a 3-D stack
            fits.PrimaryHDU(data, header=fits.Header({"DATE-OBS": times[0]})).writeto(inputs / f"s{s}_stack.fits")
            continue
        for k in range(N_FRAMES):
            fits.PrimaryHDU(data[k], header=fits.Header({"DATE-OBS": times[k]})).writeto(inputs / f"s{s}_{k:02d}.fits")
    return cube_path, inputs


def _same_outputs(a, b):
    """Every output FITS of folder ``a`` equals ``b``'s: pixel data of every HDU, and every header card but
    the write time; and the summaries' per-file corrections."""
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*.fits"))  # the bias offset maps' folder too
    assert names and names == sorted(str(p.relative_to(b)) for p in b.rglob("*.fits"))
    assert any("/" in name for name in names)
    for name in names:
        with fits.open(a / name) as x, fits.open(b / name) as y:
            assert len(x) == len(y)
            for hx, hy in zip(x, y, strict=True):
                if hx.data is None:
                    assert hy.data is None
                else:
                    np.testing.assert_array_equal(hx.data, hy.data, err_msg=name)
                    assert hx.data.dtype == hy.data.dtype
                cards = {k: v for k, v in hx.header.items() if k not in _WHEN}
                assert cards == {k: v for k, v in hy.header.items() if k not in _WHEN}, name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    strip = [({k: v for k, v in f.items() if k != "output"}) for f in sa["files"]]
    assert strip == [({k: v for k, v in f.items() if k != "output"}) for f in sb["files"]]
    assert sa["corrections"] == sb["corrections"] and sa["frames"] == sb["frames"]
    return sa


def test_local_cluster_correct_equals_the_one_process_correct(archive, tmp_path, capsys):
    cube_path, inputs = archive
    args = ["correct", "--cube", str(cube_path), str(inputs), "--window", "6", "--backend", "numpy"]
    assert main([*args, "-o", str(tmp_path / "one"), "--no-progress"]) == 0
    # process workers (a LocalCluster of 2): the series go out by path, each worker reads the cube itself
    assert main([*args, "-o", str(tmp_path / "dask"), "--scheduler", "local:2", "--no-progress"]) == 0
    summary = _same_outputs(tmp_path / "one", tmp_path / "dask")
    assert len(summary["series"]) == N_SERIES and summary["frames"] == N_SERIES * N_FRAMES
    assert summary["corrections"]["low"] + summary["corrections"]["high"] > 0  # RTN jumps were corrected
    assert len(list((tmp_path / "dask").glob("*.fits"))) == 3 * N_FRAMES + 1


def test_a_running_scheduler_is_joined_and_progress_shown(archive, tmp_path, capsys):
    from distributed import LocalCluster

    cube_path, inputs = archive
    cube = read_cube(cube_path)
    settings = EngineSettings(window=6)
    correct_files(cube, [inputs], tmp_path / "one", settings, backend="numpy", progress=False, cube_path=str(cube_path))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        correct_files(cube, [inputs], tmp_path / "dask", settings, backend="numpy", progress=True,
                      cube_path=str(cube_path), scheduler=cluster.scheduler_address)
    assert f"{N_SERIES * N_FRAMES}/{N_SERIES * N_FRAMES}" in capsys.readouterr().err  # the frames' progress bar
    _same_outputs(tmp_path / "one", tmp_path / "dask")


def test_scheduler_needs_the_cube_file_and_a_good_address(archive, tmp_path, capsys):
    cube_path, inputs = archive
    with pytest.raises(ValueError, match="cube_path"):
        correct_files(read_cube(cube_path), [inputs], tmp_path / "x", EngineSettings(window=6), scheduler="local:1")
    assert main(["correct", "--cube", str(cube_path), str(inputs), "-o", str(tmp_path / "y"), "--window", "6",
                 "--scheduler", "local:0"]) == 2
    assert "--scheduler: local:N" in capsys.readouterr().err
