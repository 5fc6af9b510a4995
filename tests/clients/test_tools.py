"""Simulated camera, FITS replay and FITS sink against a running service."""

import threading

import numpy as np
import pytest
from astropy.io import fits

from rtnstream.clients.camera import run_camera
from rtnstream.clients.replay import replay_files
from rtnstream.clients.sink import frame_filename, run_sink
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.fitsio import FrameSource
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.simulate import Scene
from rtnstream.offline import rtn_header_cards
from tests.clients._job import start_job
from tests.service._support import SHAPE, offline, receive_series


def test_camera_sends_the_simulated_series_with_its_truth(api, sim):
    status = start_job(api, sim.cube_path, reference="temporal", window=4)
    scene = Scene.make("stars", SHAPE, sky_e=2.0, n_stars=3, seed=8)
    kept = []
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx, \
            FrameSender(status["endpoints"]["ingest"], "cam") as tx:
        series = run_camera(tx, sim.model, 12, fps=None, scene=scene, seed=21,
                            on_frame=lambda seq, f: kept.append((seq, f)))
        got = receive_series(rx)
    frames, _, _ = sim.model.stack(12, scene, seed=21)
    assert [seq for seq, _ in kept] == list(range(12))
    np.testing.assert_array_equal(np.stack([f.data for _, f in kept]), frames)
    assert {m.header.series for m in got} == {series}
    for m, w in zip(got, offline(sim.cube, frames, EngineSettings(window=4)), strict=True):
        np.testing.assert_array_equal(m.data, w.data)
    with pytest.raises(ValueError, match="fps"):
        run_camera(tx, sim.model, 3, fps=0)
    api.stop_job(status["id"])


def test_replay_sends_2d_and_3d_files_as_one_series(api, sim, tmp_path):
    files = [tmp_path / "a.fits", tmp_path / "b.fits", tmp_path / "c.fits"]
    fits.PrimaryHDU(sim.frames[0]).writeto(files[0])
    fits.PrimaryHDU(sim.frames[1:10], header=fits.Header([("EXPTIME", 2.0), ("FILTER", "r")])).writeto(files[1])
    fits.PrimaryHDU(sim.frames[10]).writeto(files[2])
    status = start_job(api, sim.cube_path, reference="temporal", window=4)
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx, \
            FrameSender(status["endpoints"]["ingest"], "cam") as tx:
        series, sent = replay_files(tx, files, progress=False)
        got = receive_series(rx)
    assert sent == len(got) == 11
    for m, w in zip(got, offline(sim.cube, sim.frames[:11], EngineSettings(window=4)), strict=True):
        np.testing.assert_array_equal(m.data, w.data)
    assert got[0].header.meta["FILENAME"] == "a.fits"
    assert got[5].header.meta == {"FILENAME": "b.fits", "EXPTIME": 2.0, "FILTER": "r", "FRAMENUM": 4}
    assert got[5].header.exptime == 2.0
    api.stop_job(status["id"])


def test_sink_writes_fits_with_the_rtn_keys(api, sim, tmp_path):
    status = start_job(api, sim.cube_path, reference="spatial")
    written = {}
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx:
        sink = threading.Thread(target=lambda: written.update(n=run_sink(rx, tmp_path, max_frames=5,
                                                                            progress=False)))
        sink.start()
        with FrameSender(status["endpoints"]["ingest"], "cam") as tx:
            tx.start_series("night/1")  # a slash: the file name must stay inside the folder
            for f in sim.frames[:5]:
                tx.send_frame(f, exptime=1.5, meta={"OBJECT": "M42"})
            tx.end_series()
        sink.join(30)
    assert written["n"] == 5
    settings = EngineSettings(reference="spatial")
    want = offline(sim.cube, sim.frames[:5], settings)
    files = sorted(tmp_path.glob("*.fits"))
    assert [f.name for f in files] == [f"cam_night%2F1_{k:06d}.fits" for k in range(5)]
    for path, w in zip(files, want, strict=True):
        with FrameSource(path) as src:
            np.testing.assert_array_equal(src.read(0), w.data)
            assert src.dtype == np.uint16
        hdr = fits.getheader(path)
        for key, value, _ in rtn_header_cards(settings, sim.cube.cube_id, w.counts):
            assert hdr[key] == value, key
        assert hdr["OBJECT"] == "M42" and hdr["EXPTIME"] == 1.5 and hdr["SERIES"] == "night/1"
    api.stop_job(status["id"])


def test_frame_filename_quotes_odd_ids():
    from rtnstream.service.protocol import Header

    assert frame_filename(Header("frame", "c a", "../x", 3)) == "c%20a_..%2Fx_000003.fits"
