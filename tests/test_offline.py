"""``rtnstream correct``: FITS in, corrected FITS out, identical to the engine run in memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.cli import main
from rtnstream.fitsio import FrameSink, FrameSource
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.engine import EngineSettings, RTNEngine
from rtnstream.kernels.exceptions import FrameError, SeriesError
from rtnstream.kernels.simulate import Scene, SensorModel
from rtnstream.offline import correct_files

SHAPE = (40, 48)
N_FRAMES = 24


@pytest.fixture(scope="module")
def sensor() -> SensorModel:
    return SensorModel.random(SHAPE, rtn_fraction=0.08, seed=11)


@pytest.fixture(scope="module")
def frames(sensor) -> np.ndarray:
    data, _states, _clean = sensor.stack(N_FRAMES, Scene.make("stars", SHAPE, n_stars=4, seed=2), seed=5)
    return data


@pytest.fixture(scope="module")
def cube_path(sensor, tmp_path_factory):
    path = tmp_path_factory.mktemp("cube") / "cube.fits"
    write_cube(sensor.true_cube(), path)
    return path


def write_inputs(folder, frames) -> list:
    """A mix of 3-D stacks and 2-D frames: 10-frame stack, 3 single frames, the rest as a stack."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    hdu = fits.PrimaryHDU(frames[:10])
    hdu.header["OBSERVER"] = "test"
    paths.append(folder / "a_stack.fits")
    hdu.writeto(paths[-1])
    for k in range(10, 13):
        paths.append(folder / f"b_frame{k}.fits")
        fits.PrimaryHDU(frames[k]).writeto(paths[-1])
    paths.append(folder / "c_stack.fits")
    fits.PrimaryHDU(frames[13:]).writeto(paths[-1])
    return paths


def engine_output(sensor, frames, settings) -> np.ndarray:
    engine = RTNEngine(sensor.true_cube(), settings)
    engine.start_series()
    out = [o for f in frames for o in engine.push(f)] + engine.finish()
    return np.stack([o.data for o in out])


@pytest.mark.parametrize("reference", ["temporal", "causal", "spatial"])
def test_cli_output_matches_engine(sensor, frames, cube_path, tmp_path, reference, capsys):
    inputs = write_inputs(tmp_path / "in", frames)
    outdir = tmp_path / "out"
    rc = main(["correct", "--cube", str(cube_path), *map(str, inputs), "-o", str(outdir),
               "--reference", reference, "--window", "6", "--backend", "numpy", "--no-progress"])
    assert rc == 0
    expected = engine_output(sensor, frames, EngineSettings(reference=reference, window=6))
    got = []
    summary = json.loads((outdir / "summary.json").read_text())
    total_low = 0
    for path, entry in zip(inputs, summary["files"], strict=True):
        out = outdir / path.name
        with fits.open(path) as src, fits.open(out) as dst:
            assert dst[0].data.shape == src[0].data.shape
            assert dst[0].data.dtype == src[0].data.dtype == np.uint16
            hdr = dst[0].header
            assert hdr["RTNREF"] == reference
            assert hdr["RTNCORR"] is True
            assert hdr["RTNCUBE"] == sensor.true_cube().cube_id
            assert hdr["RTNALPHA"] == 0.003
            assert hdr["RTNNLO"] == entry["corrections"]["low"]
            assert hdr["RTNNHI"] == entry["corrections"]["high"]
            total_low += hdr["RTNNLO"]
            if path.name == "a_stack.fits":
                assert hdr["OBSERVER"] == "test"
            data = dst[0].data
            got.extend(data if data.ndim == 3 else [data])
    np.testing.assert_array_equal(np.stack(got), expected)
    assert summary["frames"] == N_FRAMES and summary["complete"] is True
    assert summary["corrections"]["low"] == total_low > 0
    offset = fits.getdata(outdir / "calib" / "series_001_bias_offset.fits")
    assert offset.shape == SHAPE
    assert np.count_nonzero(offset[~sensor.true_cube().rtn_mask]) == 0


def test_float_frames_stay_float(sensor, frames, cube_path, tmp_path):
    path = tmp_path / "float.fits"
    fits.PrimaryHDU(frames.astype(np.float32)).writeto(path)
    correct_files(sensor.true_cube(), [path], tmp_path / "out", EngineSettings(), backend="numpy",
                  progress=False)
    out = fits.getdata(tmp_path / "out" / "float.fits")
    assert out.dtype == np.dtype(">f4")
    changed = out != frames
    assert changed.any()
    # float corrections move a pixel by Delta/g exactly (up to float32 rounding)
    idx = np.flatnonzero(changed[5])
    step = np.abs(out[5].ravel()[idx].astype(np.float64) - frames[5].ravel()[idx])
    d_adu = (sensor.true_cube().delta_e / sensor.gain_e_per_adu).ravel()[idx]
    np.testing.assert_allclose(step, d_adu, rtol=1e-6)


def test_streaming_keeps_memory_bounded(tmp_path):
    """A stack many times larger than the engine's working set is corrected with bounded memory."""
    shape, n = (128, 128), 160
    sensor = SensorModel.random(shape, seed=3)
    path = tmp_path / "big.fits"
    sink = FrameSink(path, shape, np.uint16, n)
    for f in sensor.frames(n, seed=4):
        sink.write(f.data)
    sink.close()
    stack_bytes = n * shape[0] * shape[1] * 2
    cube = sensor.true_cube()
    tracemalloc.start()
    correct_files(cube, [path], tmp_path / "out", EngineSettings(window=10), backend="numpy", progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the engine holds W/2 + 1 pending frames plus the ring of RTN pixels: about 12 frames of 160
    assert peak < 0.35 * stack_bytes, f"peak {peak} bytes for a {stack_bytes}-byte stack"
    with FrameSource(tmp_path / "out" / "big.fits") as out:
        assert out.n_frames == n and out.dtype == np.uint16


def test_shape_mismatch_is_a_clear_error(sensor, tmp_path, cube_path, capsys):
    path = tmp_path / "wrong.fits"
    fits.PrimaryHDU(np.zeros((12, 30, 30), np.uint16)).writeto(path)
    rc = main(["correct", "--cube", str(cube_path), str(path), "-o", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "wrong.fits" in err and "(30, 30)" in err and str(SHAPE) in err


def test_window_longer_than_series(sensor, frames, tmp_path):
    path = tmp_path / "short.fits"
    fits.PrimaryHDU(frames[:8]).writeto(path)
    with pytest.raises(SeriesError, match="window 10 needs a series of at least 11 frames, got 8"):
        correct_files(sensor.true_cube(), [path], tmp_path / "out", EngineSettings(window=10), backend="numpy")


def test_unsupported_dtype(sensor, tmp_path):
    path = tmp_path / "int64.fits"
    fits.PrimaryHDU(np.zeros((12, *SHAPE), np.int64)).writeto(path)
    with pytest.raises(FrameError, match="unsupported dtype int64"):
        correct_files(sensor.true_cube(), [path], tmp_path / "out", EngineSettings(), backend="numpy",
                      progress=False)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_fits(sensor, frames, tmp_path, cube_path, capsys, damage):
    path = tmp_path / "bad.fits"
    if damage == "garbage":
        path.write_bytes(b"this is not FITS" * 300)
    else:
        fits.PrimaryHDU(frames).writeto(path)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    rc = main(["correct", "--cube", str(cube_path), str(path), "-o", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    assert "bad.fits" in capsys.readouterr().err


def test_nan_in_cube_is_refused(sensor, frames, tmp_path, capsys):
    path = tmp_path / "cube.fits"
    # damage a valid file, as a bad fit or a bad copy would
    with fits.open(write_cube(sensor.true_cube(), path, version=1), mode="update") as hdul:
        hdul["DELTA"].data[np.unravel_index(sensor.rtn_index[0], SHAPE)] = np.nan
    data = tmp_path / "frames.fits"
    fits.PrimaryHDU(frames).writeto(data)
    rc = main(["correct", "--cube", str(path), str(data), "-o", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    assert "DELTA is NaN" in capsys.readouterr().err


def test_output_never_overwrites_input(sensor, frames, tmp_path):
    path = tmp_path / "frames.fits"
    fits.PrimaryHDU(frames).writeto(path)
    with pytest.raises(FrameError, match="overwrite the input"):
        correct_files(sensor.true_cube(), [path], tmp_path, EngineSettings(), backend="numpy")
    np.testing.assert_array_equal(fits.getdata(path), frames)


def test_simulate_then_correct_from_the_command_line(tmp_path, capsys):
    """``rtnstream simulate`` writes frames, truth and cube that ``rtnstream correct`` takes as they are."""
    sim = tmp_path / "sim"
    assert main(["simulate", "-o", str(sim), "--shape", "32", "40", "--frames", "15", "--frames-per-file", "4",
                 "--scene", "flat", "--sky-e", "5", "--seed", "3"]) == 0
    info = json.loads((sim / "truth.json").read_text())
    assert info["files"] == [f"flat_{k:05d}.fits" for k in range(4)]
    truth = np.load(sim / "truth.npz")
    assert truth["states"].shape == (15, info["n_rtn"])
    frames = np.concatenate([fits.getdata(sim / name) for name in info["files"]])
    assert frames.shape == (15, 32, 40) and frames.dtype == np.uint16
    # the frames hold the recorded jumps: high-state pixels read higher than low-state ones on average
    vals = frames.reshape(15, -1)[:, truth["rtn_index"]].astype(float)
    assert vals[truth["states"] == 1].mean() > vals[truth["states"] == -1].mean()
    assert main(["correct", "--cube", str(sim / "cube.fits"), *[str(sim / n) for n in info["files"]],
                 "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == 15 and summary["corrections"]["low"] > 0


def _two_series_with_an_unreadable_file(folder, frames):
    """24 frames as two series of 12, an hour apart; f18.fits passes the scan but its data cannot be read."""
    folder.mkdir()
    for k in range(N_FRAMES):  # two series of 12 frames, an hour apart
        t = k if k < 12 else 3600 + k
        header = fits.Header([("DATE-OBS", f"2026-12-01T{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}")])
        path = folder / f"f{k:02d}.fits"
        if k != 18:
            fits.PrimaryHDU(frames[k], header=header).writeto(path)
            continue
        # tile-compressed, its compressed bytes zeroed: header and size are fine, decompression fails
        fits.HDUList([fits.PrimaryHDU(header=header), fits.CompImageHDU(frames[k])]).writeto(path)
        raw = bytearray(path.read_bytes())
        raw[len(raw) - 2000:len(raw) - 200] = bytes(1800)
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("reference", ["spatial", "temporal"])
def test_failure_mid_run_leaves_a_summary_of_what_was_written(sensor, frames, tmp_path, reference):
    """A file that passes the scan but whose data cannot be read stops the run: summary.json still lists
    every output written before it (the finished series' and the stopped series' own), and says why."""
    folder = tmp_path / "in"
    _two_series_with_an_unreadable_file(folder, frames)
    out = tmp_path / "out"
    with pytest.raises(FrameError, match="f18.fits"):
        correct_files(sensor.true_cube(), [folder], out, EngineSettings(reference=reference), backend="numpy")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and "f18.fits" in summary["error"]
    assert summary["frames"] == 12 and [e["input"] for e in summary["files"]] == \
        [str(folder / f"f{k:02d}.fits") for k in range(12)]
    for entry in summary["files"]:  # the finished series' outputs are complete files
        assert fits.getdata(entry["output"]).shape == SHAPE
    # the stopped series: the spatial reference had written f12..f17 (one output per frame), the temporal
    # one nothing yet (frame 12 waits for its window, which reaches past frame 18)
    expected = [str(out / f"f{k:02d}.fits") for k in range(12, 18)] if reference == "spatial" else []
    assert summary["unfinished"] == [{"series": 2, "written": expected}]
    assert summary["cube_id"] == sensor.true_cube().cube_id


def test_skipped_file_is_not_listed_as_an_output(sensor, frames, tmp_path):
    """--skip-bad passes over the unreadable file: it is listed as bad, not among the outputs."""
    folder = tmp_path / "in"
    _two_series_with_an_unreadable_file(folder, frames)
    out = tmp_path / "out"
    summary = correct_files(sensor.true_cube(), [folder], out, EngineSettings(reference="spatial"), backend="numpy",
                            skip_bad=True)
    assert summary["complete"] is True and summary["frames"] == N_FRAMES - 1
    assert [b["file"] for b in summary["bad"]] == [str(folder / "f18.fits")]
    listed = [e["output"] for e in summary["files"]]
    assert listed == [str(out / f"f{k:02d}.fits") for k in range(N_FRAMES) if k != 18]
    assert all((out / Path(p).name).exists() for p in listed) and not (out / "f18.fits").exists()


def test_sigterm_stops_correct_as_ctrl_c_does():
    """``rtnstream correct`` turns SIGTERM into KeyboardInterrupt while it runs (so the run writes its
    summary.json and the command exits 130 with one line), and restores the handler after."""
    import os
    import signal

    from rtnstream.commands.correct import _sigterm_interrupts

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), _sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next statement
    assert signal.getsignal(signal.SIGTERM) is before
