"""``rtnstream bias-collect`` and compact stacks on bad input: nothing taken is lost, nothing malformed is written.

Small runs (16 x 16 pixels, 120 single-frame files, screen of 50): each test takes well under a second.
"""

import threading
import time

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.calibration.compact import CompactStack, CompactStackWriter
from rtnstream.calibration.prescreen import collect_stack
from rtnstream.calibration.stacks import FitsStack
from rtnstream.cli import main
from rtnstream.kernels.simulate import SensorModel

SHAPE = (16, 16)
N_FILES = 120
SCREEN = 50


@pytest.fixture(scope="module")
def frames():
    sensor = SensorModel.random(SHAPE, rtn_fraction=0.1, seed=3)
    data, _, _ = sensor.stack(N_FILES, seed=4)
    return data, sensor.gain_e_per_adu


def write_files(folder, frames, n=N_FILES) -> list:
    data, gain = frames
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        paths.append(folder / f"bias_{k:05d}.fits")
        fits.PrimaryHDU(data[k], header=fits.Header({"EGAIN": gain})).writeto(paths[-1])
    return paths


def expected_values(paths, tmp_path) -> np.ndarray:
    return collect_stack(FitsStack(paths), SCREEN, tmp_path / "reference.fits").values()


def test_a_garbage_file_after_the_screen_is_skipped_and_nothing_removed_is_lost(frames, tmp_path, capsys):
    paths = write_files(tmp_path / "run", frames)
    good = [p for k, p in enumerate(paths) if k != 70]
    reference = expected_values(good, tmp_path)
    paths[70].write_text("garbage\n")
    out = tmp_path / "out.fits"
    assert main(["bias-collect", str(tmp_path / "run"), "-o", str(out), "--screen", str(SCREEN),
                 "--remove-taken", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "1 files not taken" in err and "bias_00070.fits" in err
    compact = CompactStack(out)
    assert compact.n_frames == N_FILES - 1
    np.testing.assert_array_equal(compact.values(), reference)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["bias_00070.fits"]  # the skipped one stays
    assert not list(tmp_path.glob("out.fits.*"))


def test_a_file_of_another_shape_is_skipped_after_the_screen_and_named_alone_before_it(frames, tmp_path, capsys):
    paths = write_files(tmp_path / "run", frames, 60)
    fits.PrimaryHDU(np.zeros((8, 8), dtype=np.float64)).writeto(paths[55], overwrite=True)
    fits.PrimaryHDU(np.zeros((8, 8), dtype=np.float64)).writeto(paths[10], overwrite=True)
    out = tmp_path / "out.fits"
    assert main(["bias-collect", *map(str, paths), "-o", str(out), "--screen", str(SCREEN), "--no-progress"]) == 0
    err = capsys.readouterr().err
    lines = [line.strip() for line in err.splitlines() if "frame shape" in line]
    assert len(lines) == 2
    for line, bad in zip(lines, (paths[10], paths[55]), strict=True):
        assert line.startswith(f"{bad}: frame shape (8, 8)")  # the bad file only, not the run's first too
        assert str(paths[0]) not in line
    assert CompactStack(out).n_frames == 58


def test_a_failure_removes_the_spool(frames, tmp_path, capsys):
    paths = write_files(tmp_path / "run", frames, 60)
    out = tmp_path / "out.fits"
    # 60 frames, --screen 100: the screen never runs; nothing written, no .part left
    assert main(["bias-collect", *map(str, paths), "-o", str(out), "--screen", "100", "--no-progress"]) == 2
    assert "fewer than the 100" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("out.fits.*"))


def test_compact_stacks_are_refused_as_bias_collect_and_mixed_fit_inputs(frames, tmp_path, capsys):
    paths = write_files(tmp_path / "run", frames, 60)
    compact = tmp_path / "c.fits"
    assert main(["bias-collect", *map(str, paths), "-o", str(compact), "--screen", str(SCREEN),
                 "--no-progress"]) == 0
    capsys.readouterr()
    x = tmp_path / "x.fits"
    assert main(["bias-collect", str(compact), str(tmp_path / "run" / "bias_*.fits"), "-o", str(x),
                 "--screen", str(SCREEN), "--no-progress"]) == 2
    assert f"{compact}: a compact stack" in capsys.readouterr().err
    assert not x.exists() and not list(tmp_path.glob("x.fits.*"))
    for inputs in ([compact, *paths], [compact, compact]):
        cube = tmp_path / "cube.fits"
        assert main(["fit", *map(str, inputs), "-o", str(cube), "--no-plots", "--no-progress"]) == 2
        assert f"{compact}: a compact bias stack" in capsys.readouterr().err
        assert not cube.exists()


def test_a_compact_stack_that_does_not_read_back_never_takes_the_output_name(frames, tmp_path):
    data, _ = frames
    screen = collect_stack(FitsStack(write_files(tmp_path / "run", frames, 60)), SCREEN, tmp_path / "c.fits").screen
    out = tmp_path / "out.fits"
    writer = CompactStackWriter(out, screen, data.dtype)
    for k in range(SCREEN + 1):
        writer.add_frame(data[k], None, f"frame {k}")
    writer._spool.flush()
    writer._part.write_bytes(writer._part.read_bytes()[:-2])  # a spool cut short (a full disk, say)
    with pytest.raises(ValueError, match="does not read back"):
        writer.close()
    assert not out.exists() and not list(tmp_path.glob("out.fits.*"))


def test_rollback_forgets_a_half_kept_file(frames, tmp_path):
    data, _ = frames
    compact = collect_stack(FitsStack(write_files(tmp_path / "run", frames, 60)), SCREEN, tmp_path / "c.fits")
    writer = CompactStackWriter(tmp_path / "out.fits", compact.screen, data.dtype)
    for k in range(55):
        writer.add_frame(data[k], None, f"frame {k}")
    writer.rollback(52)
    for k in range(52, 60):
        writer.add_frame(data[k], None, f"frame {k}")
    np.testing.assert_array_equal(CompactStack(writer.close()).values(), compact.values())


def test_watch_lists_a_junk_and_a_truncated_file_it_cannot_take(frames, tmp_path, capsys):
    source = write_files(tmp_path / "source", frames, 60)
    folder = tmp_path / "incoming"
    folder.mkdir()
    out = tmp_path / "watched.fits"
    rc = []
    thread = threading.Thread(target=lambda: rc.append(main(
        ["bias-collect", str(folder), "--watch", "--screen", str(SCREEN), "-o", str(out), "--settle", "0.05",
         "--poll", "0.02", "--idle", "1.5", "--no-progress"])))
    thread.start()
    try:
        for k, path in enumerate(source):
            target = folder / path.name
            if k == 20:
                target.write_text("junk\n")
            elif k == 30:
                target.write_bytes(path.read_bytes()[:4000])  # the header and part of the data
            else:
                tmp = folder / f".{path.name}.part"
                tmp.write_bytes(path.read_bytes())
                tmp.rename(target)
            time.sleep(0.002)
    finally:
        thread.join(60)
    assert rc == [0]
    err = capsys.readouterr()
    assert "2 files not taken" in err.err and "2 files skipped" in err.out
    assert source[20].name in err.err and source[30].name in err.err
    assert CompactStack(out).n_frames == 58


def test_a_file_that_fails_while_its_values_are_read_leaves_the_kept_frames_as_they_were(frames, tmp_path):
    """A cube of 10 frames is cut short between its inspection and the read of its values (after the
    screen): the read fails; the collector keeps exactly the frames before it, and the run goes on."""
    from rtnstream.calibration.prescreen import BiasCollector
    from rtnstream.calibration.stacks import inspect_fits

    data, _ = frames
    paths = write_files(tmp_path / "run", frames, 60)
    reference = expected_values(paths, tmp_path)
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(data[60:70]).writeto(cube)
    collector = BiasCollector(tmp_path / "out.fits", SCREEN)
    for path in paths[:55]:
        collector.add(FitsStack([path]))
    cut = FitsStack([inspect_fits(cube)])
    with open(cube, "r+b") as f:
        f.truncate(2880 + 5 * data[0].nbytes)
    with pytest.raises((OSError, ValueError, TypeError)):  # astropy: TypeError "buffer is too small"
        collector.add(cut)
    assert collector.n_frames == 55
    for path in paths[55:]:
        collector.add(FitsStack([path]))
    np.testing.assert_array_equal(collector.close().values(), reference)
