"""Inputs of offline correction: folders and globs, time order, series, bad and stray files, open-file limits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.cli import main
from rtnstream.fitsio import check_complete
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.simulate import Scene, SensorModel
from rtnstream.series import natural_key, parse_time
from tests._acquisition import with_camera, write_night

SHAPE = (24, 32)
W = 4


@pytest.fixture(scope="module")
def sensor() -> SensorModel:
    return SensorModel.random(SHAPE, rtn_fraction=0.1, seed=5)


@pytest.fixture(scope="module")
def cube(sensor):
    return with_camera(sensor.true_cube())


@pytest.fixture(scope="module")
def cube_path(cube, tmp_path_factory):
    return write_cube(cube, tmp_path_factory.mktemp("cube") / "cube.fits")


def stack(sensor, n, seed, sky=2.0):
    data, _, _ = sensor.stack(n, Scene.make("stars", SHAPE, sky_e=sky, n_stars=3, seed=seed), seed=seed)
    return data


def engine_output(cube, frames) -> np.ndarray:
    engine = RTNEngine(cube, EngineSettings(window=W))
    engine.start_series()
    return np.stack([o.data for o in [o for f in frames for o in engine.push(f)] + engine.finish()])


def run(cube_path, *args) -> int:
    return main(["correct", "--cube", str(cube_path), "--window", str(W), "--backend", "numpy", "--no-progress",
                 *map(str, args)])


def test_parse_time_and_natural_order():
    assert parse_time("2026-11-30T21:00:01.1234567") - parse_time("2026-11-30T21:00:00") == pytest.approx(1.1234567)
    assert parse_time("2026-11-30T21:00:00Z") == parse_time("2026-11-30 21:00:00")
    assert parse_time("not a date") is None and parse_time(None) is None
    assert parse_time(2461010.5) == 2461010.5 * 86400
    names = ["LIGHT_10.fits", "LIGHT_2.fits", "LIGHT_1.fits"]
    assert sorted(names, key=natural_key) == ["LIGHT_1.fits", "LIGHT_2.fits", "LIGHT_10.fits"]


def test_name_order_is_not_time_order(sensor, cube, cube_path, tmp_path):
    """N.I.N.A. names (LIGHT_M31_1 .. LIGHT_M31_14) sort wrongly as text: the series is taken in time order."""
    frames = stack(sensor, 14, seed=1)
    paths = write_night(tmp_path / "in", frames, "nina")
    assert sorted(p.name for p in paths) != [p.name for p in paths]  # a plain glob order is wrong
    # the time order is not the name order either: shuffle which file holds which time
    order = np.random.default_rng(3).permutation(len(paths))
    for k, path in enumerate(paths):
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["DATE-OBS"] = (datetime(2026, 11, 30, 21) + timedelta(seconds=3.0 * order[k])).isoformat()
    by_time = [paths[k] for k in np.argsort(order)]
    assert run(cube_path, str(tmp_path / "in" / "*.fits"), "-o", tmp_path / "out") == 0
    want = engine_output(cube, np.stack([fits.getdata(p) for p in by_time]))
    got = np.stack([fits.getdata(tmp_path / "out" / p.name) for p in by_time])
    np.testing.assert_array_equal(got, want)
    wrong = engine_output(cube, np.stack([fits.getdata(p) for p in sorted(paths)]))
    assert not np.array_equal(np.stack([fits.getdata(tmp_path / "out" / p.name) for p in sorted(paths)]), wrong)
    # without DATE-OBS the natural name order is used
    for path in paths:
        with fits.open(path, mode="update") as hdul:
            del hdul[0].header["DATE-OBS"]
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out2") == 0
    np.testing.assert_array_equal(np.stack([fits.getdata(tmp_path / "out2" / p.name) for p in paths]),
                                  engine_output(cube, frames))


def test_two_targets_are_two_series(sensor, cube, cube_path, tmp_path, capsys):
    a, b = stack(sensor, 12, seed=2), stack(sensor, 11, seed=3, sky=40.0)
    start = datetime(2026, 11, 30, 22)
    pa = write_night(tmp_path / "in", a, "maxim", obj="M31", start=start)
    pb = write_night(tmp_path / "in", b, "maxim", obj="NGC7000", start=start + timedelta(seconds=40))
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "plan", "--dry-run") == 0
    plan = capsys.readouterr().out.strip().splitlines()
    assert len(plan) == 2 and "object changed" in plan[1] and "12 frames" in plan[0] and "11 frames" in plan[1]
    assert not (tmp_path / "plan").exists()  # a dry run writes nothing
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["frames"] for s in summary["series"]] == [12, 11]
    for paths, frames, number in ((pa, a, 1), (pb, b, 2)):
        got = np.stack([fits.getdata(tmp_path / "out" / p.name) for p in paths])
        np.testing.assert_array_equal(got, engine_output(cube, frames))
        assert {fits.getheader(tmp_path / "out" / p.name)["RTNSER"] for p in paths} == {number}
        assert (tmp_path / "out" / "calib" / f"series_{number:03d}_bias_offset.fits").exists()


@pytest.mark.parametrize("change", ["gap", "EXPTIME", "FILTER", "GAIN", "XORGSUBF"])
def test_a_setting_change_or_a_gap_starts_a_series(sensor, cube_path, tmp_path, capsys, change):
    frames = stack(sensor, 12, seed=4)
    paths = write_night(tmp_path / "in", frames, "sharpcap", cadence_s=2.0)
    for path in paths[6:]:
        with fits.open(path, mode="update") as hdul:
            h = hdul[0].header
            if change == "gap":
                h["DATE-OBS"] = (datetime.fromisoformat(h["DATE-OBS"][:23]) + timedelta(hours=1)).isoformat()
            else:
                h[change] = h[change] + 1 if change != "FILTER" else "Ha"
    rc = run(cube_path, tmp_path / "in", "-o", tmp_path / "out", "--dry-run")
    assert rc == 0
    plan = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in plan] == ["series 1", "series 2"]
    reason = {"gap": "gap of 3602.0 s (cadence 2.0 s)", "EXPTIME": "exptime changed", "FILTER": "filter changed",
              "GAIN": "gain changed", "XORGSUBF": "roi changed"}[change]
    assert f"[{reason}]" in plan[1]
    if change == "GAIN":  # the cube was fitted at gain 56: the plan says the second series would be refused
        assert "REFUSED" in plan[1] and "GAIN = 57" in plan[1] and "REFUSED" not in plan[0]


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_a_truncated_file_stops_the_run_before_anything_is_written(sensor, cube_path, tmp_path, capsys):
    frames = stack(sensor, 12, seed=6)
    paths = write_night(tmp_path / "in", frames, "nina")
    raw = paths[7].read_bytes()
    paths[7].write_bytes(raw[: len(raw) - 3000])  # cut inside the data
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert paths[7].name in err and "truncated" in err
    assert not list(tmp_path.glob("out/*.fits"))


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_skip_bad_passes_over_a_truncated_and_a_stray_file(sensor, cube, cube_path, tmp_path, capsys):
    frames = stack(sensor, 13, seed=7)
    paths = write_night(tmp_path / "in", frames, "nina")
    raw = paths[5].read_bytes()
    paths[5].write_bytes(raw[:2000])  # cut inside the header
    (tmp_path / "in" / "Thumbs.db").write_bytes(b"\x00\x01 not an image" * 50)
    (tmp_path / "in" / "notes.txt").write_text("flats tomorrow")
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out") == 2  # without --skip-bad: stops, by name
    assert paths[5].name in capsys.readouterr().err
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out", "--skip-bad") == 0
    err = capsys.readouterr().err
    assert "Thumbs.db: not a FITS file" in err and "notes.txt: not a FITS file" in err and paths[5].name in err
    good = [p for k, p in enumerate(paths) if k != 5]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.fits")) == sorted(p.name for p in good)
    np.testing.assert_array_equal(np.stack([fits.getdata(tmp_path / "out" / p.name) for p in good]),
                                  engine_output(cube, np.delete(frames, 5, axis=0)))


def _child(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from rtnstream.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_5000_files_under_ulimit_256(sensor, cube, cube_path, tmp_path):
    """A night of 5000 one-frame files is corrected with at most 256 open files (the macOS default)."""
    small = (8, 8)
    sensor = SensorModel.random(small, rtn_fraction=0.2, seed=8)
    cube = with_camera(sensor.true_cube())
    path = write_cube(cube, tmp_path / "cube.fits")
    n = 5000
    frames, _, _ = sensor.stack(n, Scene.make("flat", small, sky_e=1.0), seed=9)
    write_night(tmp_path / "in", frames, "nina", cadence_s=1.0)
    out = tmp_path / "out"
    proc = subprocess.run(_child(_LIMITED, "correct", "--cube", str(path), str(tmp_path / "in"), "-o", str(out),
                                 "--window", str(W), "--backend", "numpy", "--no-progress"),
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == n and len(summary["series"]) == 1
    assert len(list(out.glob("*.fits"))) == n
    got = np.stack([fits.getdata(out / f"LIGHT_M31_{k}.fits") for k in (1, 2500, 5000)])
    np.testing.assert_array_equal(got, engine_output(cube, frames)[[0, 2499, 4999]])


def test_a_killed_run_leaves_only_complete_outputs(sensor, cube_path, tmp_path):
    """Outputs are renamed into place when complete: killing the run mid-way leaves no partial frame file."""
    frames = stack(sensor, 400, seed=10)
    write_night(tmp_path / "in", frames, "ekos")
    out = tmp_path / "out"
    proc = subprocess.Popen(_child(_LIMITED, "correct", "--cube", str(cube_path), str(tmp_path / "in"), "-o",
                                   str(out), "--window", str(W), "--backend", "numpy", "--no-progress"),
                            cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and len(list(out.glob("*.fz"))) < 20:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    written = list(out.glob("*.fz"))
    assert written
    for path in written:
        with fits.open(path, lazy_load_hdus=False) as hdul:
            check_complete(path, hdul)
            assert hdul[1].header["RTNCORR"] is True and [h.name for h in hdul][-2:] == ["DQ", "UNCERT"]
            assert hdul[1].data.shape == SHAPE
    assert all(p.name.startswith(".") for p in out.iterdir() if not p.name.endswith(".fz") and p.is_file())


def test_a_series_too_short_stops_the_run_or_is_skipped(sensor, cube, cube_path, tmp_path, capsys):
    """Three focus frames in another filter among a night's frames: refused by name, or passed over."""
    frames = stack(sensor, 15, seed=11)
    start = datetime(2026, 11, 30, 22)
    night = write_night(tmp_path / "in", frames[:12], "nina", start=start)
    focus = write_night(tmp_path / "in", frames[12:], "nina", first=13, filt="Ha",
                        start=start + timedelta(seconds=36))
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"series 2 ({focus[0].name} .. {focus[-1].name}): window 4 needs a series of at least 5 frames" in err
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "plan", "--dry-run", "--skip-short") == 0
    assert "SKIPPED" in capsys.readouterr().out.splitlines()[1]
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out", "--skip-short") == 0
    assert "skipped series 2" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.fits")) == sorted(p.name for p in night)
    np.testing.assert_array_equal(np.stack([fits.getdata(tmp_path / "out" / p.name) for p in night]),
                                  engine_output(cube, frames[:12]))


def test_corrupt_compressed_data_stop_the_run_or_are_skipped(sensor, cube, cube_path, tmp_path, capsys):
    """A .fits.fz of the right size whose tiles do not decompress: found when read, named, never written."""
    frames = stack(sensor, 12, seed=12)
    paths = write_night(tmp_path / "in", frames, "ekos")
    raw = bytearray(paths[8].read_bytes())
    with fits.open(paths[8]) as hdul:
        start = hdul.fileinfo(1)["datLoc"]
    raw[start + 300 : start + 900] = b"\xff" * 600
    paths[8].write_bytes(bytes(raw))
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out") == 2
    assert paths[8].name in capsys.readouterr().err
    assert not (tmp_path / "out" / paths[8].name).exists()
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out2", "--skip-bad") == 0
    assert f"skipped {paths[8]}" in capsys.readouterr().err
    good = [p for k, p in enumerate(paths) if k != 8]
    assert sorted(p.name for p in (tmp_path / "out2").glob("*.fz")) == sorted(p.name for p in good)
    np.testing.assert_array_equal(np.stack([fits.getdata(tmp_path / "out2" / p.name, 1) for p in good]),
                                  engine_output(cube, np.delete(frames, 8, axis=0)))


def test_order_by_another_header_key(sensor, cube, cube_path, tmp_path):
    """MaxIm-style files whose time is in JD (a number, in days): ``--order-key JD`` orders them."""
    frames = stack(sensor, 10, seed=13)
    paths = write_night(tmp_path / "in", frames, "maxim")
    order = np.random.default_rng(5).permutation(len(paths))
    for k, path in enumerate(paths):
        with fits.open(path, mode="update") as hdul:
            del hdul[0].header["DATE-OBS"]
            hdul[0].header["JD"] = 2461010.5 + 3.0 * order[k] / 86400
    by_time = [paths[k] for k in np.argsort(order)]
    assert run(cube_path, tmp_path / "in", "-o", tmp_path / "out", "--order-key", "JD") == 0
    np.testing.assert_array_equal(np.stack([fits.getdata(tmp_path / "out" / p.name) for p in by_time]),
                                  engine_output(cube, np.stack([fits.getdata(p) for p in by_time])))
