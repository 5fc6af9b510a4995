"""``rtnstream watch``: frames written into a folder come out as offline ``correct`` makes them, across a SIGKILL."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.cli import main
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import Scene, SensorModel
from rtnstream.watch import STATE_NAME
from tests._acquisition import with_camera, write_night

SHAPE = (32, 48)
W = 4
WAIT_S = 60.0  # bound of every wait; the waits end as soon as their condition holds


@pytest.fixture(scope="module")
def sensor() -> SensorModel:
    return SensorModel.random(SHAPE, rtn_fraction=0.08, seed=21)


@pytest.fixture(scope="module")
def cube_path(sensor, tmp_path_factory) -> Path:
    return write_cube(with_camera(sensor.true_cube()), tmp_path_factory.mktemp("cube") / "cube.fits")


@pytest.fixture(scope="module")
def night(sensor, tmp_path_factory) -> list[Path]:
    """16 N.I.N.A.-style frame files (3 s cadence), then 6 more an hour later, in time order."""
    folder = tmp_path_factory.mktemp("staged")
    frames, _, _ = sensor.stack(22, Scene.make("stars", SHAPE, n_stars=3, seed=4), seed=6)
    return (write_night(folder, frames[:16]) +
            write_night(folder, frames[16:], first=17, start=datetime(2026, 11, 30, 22, 0, 0)))


def offline(paths: list[Path], cube_path: Path, outdir: Path) -> Path:
    assert main(["correct", "--cube", str(cube_path), *map(str, paths), "-o", str(outdir), "--window", str(W),
                 "--backend", "numpy", "--no-progress"]) == 0
    return outdir


def assert_same(got: Path, expected: Path, names: list[str]) -> None:
    """Every HDU's data and header of each output, and each bias offset map, are identical."""
    for name in names + [p.relative_to(expected).as_posix() for p in sorted((expected / "calib").glob("*.fits"))]:
        with fits.open(got / name) as a, fits.open(expected / name) as b:
            assert [h.name for h in a] == [h.name for h in b], name
            for ha, hb in zip(a, b, strict=True):
                assert ha.header.tostring() == hb.header.tostring(), (name, ha.name)
                if hb.data is None:
                    assert ha.data is None
                else:
                    assert ha.data.dtype == hb.data.dtype and np.array_equal(ha.data, hb.data), (name, ha.name)
    assert sorted(p.name for p in (got / "calib").glob("*.fits")) == \
        sorted(p.name for p in (expected / "calib").glob("*.fits"))


def write_in_pieces(paths: list[Path], folder: Path, pause_s: float = 0.15) -> None:
    """Write each file as a camera program might: three pieces (the header cut, then the data cut) with
    pauses longer than the watch's settle time, then the next file."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        data = path.read_bytes()
        with open(folder / path.name, "wb") as fh:
            for a, b in ((0, 100), (100, len(data) // 2), (len(data) // 2, len(data))):
                fh.write(data[a:b])
                fh.flush()
                time.sleep(pause_s)


class Watch:
    """``rtnstream watch`` as a subprocess, its log in a file."""

    def __init__(self, indir: Path, outdir: Path, cube_path: Path, *extra: str) -> None:
        self.outdir = outdir
        self.log = outdir.parent / f"{outdir.name}.{time.monotonic_ns()}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rtnstream", "watch", str(indir), "-o", str(outdir), "--cube", str(cube_path),
                 "--window", str(W), "--backend", "numpy", "--settle-s", "0.05", "--poll-s", "0.02", *extra],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=indir.parent)
        self.wait_for(lambda: (outdir / STATE_NAME).exists(), "the watch's state file")

    def outputs(self) -> list[Path]:
        return sorted(p for p in self.outdir.rglob("*.fits") if "calib" not in p.parts)

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            assert self.proc.poll() is None, f"watch exited ({self.proc.returncode}) waiting for {what}:\n" + \
                self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s:\n" + self.log.read_text()[-3000:]
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=WAIT_S)
        return self.proc.returncode, out

    def state(self) -> dict:
        return json.loads((self.outdir / STATE_NAME).read_text())


def test_frames_written_slowly_in_pieces_come_out_as_offline(night, cube_path, tmp_path):
    """Files written in pieces with pauses into a sub-folder, beside a non-FITS file, a hidden file and an
    already corrected frame: the outputs equal offline ``correct`` of the same frames, bit for bit."""
    paths = night[:10]
    expected = offline(paths, cube_path, tmp_path / "offline")
    indir = tmp_path / "in"
    (indir / "night1").mkdir(parents=True)
    (indir / "notes.txt").write_text("focus run at 21:00")
    watch = Watch(indir, tmp_path / "out", cube_path)
    writer = threading.Thread(target=write_in_pieces, args=(paths[:6], indir / "night1"))
    writer.start()
    writer.join()
    shutil.copy(expected / paths[0].name, indir / "again.fits")  # RTNCORR = T: refused, named
    write_night(indir, [fits.getdata(paths[0])], first=50, gain=120)  # another setting
    (indir / ".partial.fits").write_bytes(b"SIMPLE  =")  # hidden: left alone
    (indir / "cut.fits").write_bytes(paths[0].read_bytes()[:4000])  # never completed: waited for, not taken
    write_in_pieces(paths[6:], indir / "night1")
    watch.wait_for(lambda: len(watch.outputs()) == len(paths) - W // 2, "outputs of the frames the window allows")
    rc, out = watch.stop()
    assert rc == 0, watch.log.read_text()
    summary = json.loads(out.splitlines()[-1])
    assert summary["frames"] == len(paths) and summary["incomplete"] == ["cut.fits"]
    assert [p.relative_to(watch.outdir).as_posix() for p in watch.outputs()] == \
        sorted(f"night1/{p.name}" for p in paths)
    got = tmp_path / "flat"  # the outputs keep their sub-folder; offline's are flat
    shutil.copytree(watch.outdir / "night1", got)
    shutil.copytree(watch.outdir / "calib", got / "calib")
    assert_same(got, expected, [p.name for p in paths])
    log = watch.log.read_text()
    assert "again.fits: already corrected (RTNCORR = T" in log
    assert "LIGHT_M31_50.fits: GAIN = 120 but the cube was fitted with gain_setting = 56" in log
    assert "notes.txt" not in log and ".partial" not in log
    state = watch.state()
    assert set(state["passed"]) == {"again.fits", "LIGHT_M31_50.fits"} and state["open"] is None
    assert state["series"][0]["frames"] == len(paths) and len(state["done"]) == len(paths)


def test_sigkill_mid_night_then_restart_neither_redoes_nor_skips(night, cube_path, tmp_path):
    """Killed with SIGKILL while frames are pending, restarted: every input has exactly one output, the
    outputs written before the kill are untouched, and every output equals the offline correction."""
    paths = night[:14]
    indir, outdir = tmp_path / "in", tmp_path / "out"
    indir.mkdir()
    watch = Watch(indir, outdir, cube_path)
    for p in paths[:7]:
        shutil.copy(p, indir / p.name)
    watch.wait_for(lambda: len(watch.outputs()) == 5 and len(watch.state()["done"]) == 5,
                   "5 outputs recorded (frames 6 and 7 pending)")
    rc, _ = watch.stop(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    state = watch.state()
    assert len(state["open"]["files"]) == 7 and len(state["done"]) == 5
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in watch.outputs()}
    for p in paths[7:10]:  # written while the watch is down
        shutil.copy(p, indir / p.name)
    again = Watch(indir, outdir, cube_path)
    for p in paths[10:]:
        shutil.copy(p, indir / p.name)
    again.wait_for(lambda: len(again.outputs()) == len(paths) - W // 2, "outputs after the restart")
    rc, out = again.stop()
    assert rc == 0, again.log.read_text()
    assert json.loads(out.splitlines()[-1])["frames"] == len(paths) - 5  # none of the 5 written again
    assert sorted(p.name for p in again.outputs()) == sorted(p.name for p in paths)
    assert {name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for name, p in ((n, outdir / n) for n in before)} == before
    assert "resumed series 1: 7 frames pushed again (5 outputs already written, kept)" in again.log.read_text()
    assert_same(outdir, offline(paths, cube_path, tmp_path / "offline"), [p.name for p in paths])


def test_sigterm_flushes_the_open_series_and_exits_0(night, cube_path, tmp_path):
    paths = night[:8]
    indir = tmp_path / "in"
    indir.mkdir()
    watch = Watch(indir, tmp_path / "out", cube_path)
    for p in paths:
        shutil.copy(p, indir / p.name)
    watch.wait_for(lambda: len(watch.outputs()) == len(paths) - W // 2, "the outputs the window allows")
    assert not (watch.outdir / "calib").exists()
    rc, _ = watch.stop(signal.SIGTERM)
    assert rc == 0, watch.log.read_text()
    assert len(watch.outputs()) == len(paths)
    assert watch.state()["series"][0]["ended"] == "the watch stopped"
    assert_same(watch.outdir, offline(paths, cube_path, tmp_path / "offline"), [p.name for p in paths])


def test_idle_ends_the_series(night, cube_path, tmp_path):
    """``--idle-s``: with no new file the series ends, its last frames and bias offset map come out while the
    watch runs on; the next frames (an hour later) are series 2, as offline."""
    first, second = night[:8], night[16:]
    indir = tmp_path / "in"
    indir.mkdir()
    watch = Watch(indir, tmp_path / "out", cube_path, "--idle-s", "1")
    for p in first:
        shutil.copy(p, indir / p.name)
    watch.wait_for(lambda: len(watch.state()["series"]) == 1, "the idle end")
    assert len(watch.outputs()) == len(first)
    assert (watch.outdir / "calib" / "series_001_bias_offset.fits").exists()
    assert watch.state()["series"][0]["ended"] == "1 s without a new file"
    for p in second:
        shutil.copy(p, indir / p.name)
    watch.wait_for(lambda: len(watch.state()["series"]) == 2, "series 2's idle end")
    rc, _ = watch.stop()
    assert rc == 0
    assert [s["frames"] for s in watch.state()["series"]] == [len(first), len(second)]
    assert_same(watch.outdir, offline(first + second, cube_path, tmp_path / "offline"),
                [p.name for p in first + second])


def test_a_state_of_other_options_is_refused(night, cube_path, tmp_path):
    indir, outdir = tmp_path / "in", tmp_path / "out"
    indir.mkdir()
    outdir.mkdir()
    (outdir / STATE_NAME).write_text(json.dumps({"version": 1, "indir": str(indir.resolve()), "cube_id": "x"}))
    proc = subprocess.run([sys.executable, "-m", "rtnstream", "watch", str(indir), "-o", str(outdir), "--cube",
                           str(cube_path)], capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 2
    assert f"{outdir / STATE_NAME}: written by a watch with another cube_id" in proc.stderr


def test_a_settings_change_ends_the_series(night, cube_path, tmp_path):
    """A new filter starts series 2 at its first frame, which flushes series 1, as offline splits them."""
    first = night[:6]
    indir = tmp_path / "in"
    indir.mkdir()
    frames = np.stack([fits.getdata(p) for p in night[6:12]])
    second = write_night(tmp_path / "staged", frames, first=7, start=datetime(2026, 11, 30, 21, 0, 30), filt="R")
    watch = Watch(indir, tmp_path / "out", cube_path)
    for p in first:
        shutil.copy(p, indir / p.name)
    watch.wait_for(lambda: len(watch.outputs()) == len(first) - W // 2, "series 1's outputs the window allows")
    shutil.copy(second[0], indir / second[0].name)
    watch.wait_for(lambda: len(watch.state()["series"]) == 1, "series 1's end")
    assert watch.state()["series"][0]["ended"] == "filter changed at LIGHT_M31_7.fits"
    assert len(watch.outputs()) == len(first)
    for p in second[1:]:
        shutil.copy(p, indir / p.name)
    watch.wait_for(lambda: len(watch.outputs()) == len(first) + len(second) - W // 2, "series 2's outputs")
    rc, _ = watch.stop()
    assert rc == 0
    assert_same(watch.outdir, offline(first + second, cube_path, tmp_path / "offline"),
                [p.name for p in first + second])


def test_a_series_shorter_than_the_window_comes_out_uncorrected(night, cube_path, tmp_path):
    indir = tmp_path / "in"
    indir.mkdir()
    watch = Watch(indir, tmp_path / "out", cube_path)
    for p in night[:3]:
        shutil.copy(p, indir / p.name)
    watch.wait_for(lambda: watch.state()["open"] is not None and len(watch.state()["open"]["files"]) == 3,
                   "3 frames taken")
    rc, _ = watch.stop()
    assert rc == 0
    for p in night[:3]:
        with fits.open(watch.outdir / p.name) as out:
            assert out[0].header["RTNCORR"] is False
            np.testing.assert_array_equal(out[0].data, fits.getdata(p))
    assert watch.state()["series"][0]["corrected"] is False and not (watch.outdir / "calib").exists()
    assert "series 1 has 3 frames, window 4 needs 5: passed through uncorrected (RTNCORR = F)" in watch.log.read_text()
