"""The live FITS sink writes the products of offline correction through the same writer."""

import threading

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData

from rtnstream.clients.sink import SinkProducts, run_sink
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.offline import correct_files
from rtnstream.products import DQF_HIGH, DQF_LOW, DQF_RTN
from tests.clients._job import start_job
from tests.service._support import offline

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")


def test_sink_writes_header_cards_dq_and_uncert(api, sim, tmp_path):
    status = start_job(api, sim.cube_path, reference="temporal", window=4)
    meta = {"DATE-OBS": "2026-11-30T21:00:00.1234567", "RA": 10.68, "DEC": 41.27, "READOUTM": "High Gain Mode",
            "EGAIN": 0.3067, "NINA SEQUENCE TITLE": "night 1", "HISTORY": ["acquired by N.I.N.A."]}
    written = {}
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx:
        sink = threading.Thread(target=lambda: written.update(n=run_sink(
            rx, tmp_path, max_frames=6, progress=False, products=SinkProducts(sim.cube))))
        sink.start()
        with FrameSender(status["endpoints"]["ingest"], "cam") as tx:
            tx.start_series("s1")
            for f in sim.frames[:6]:
                tx.send_frame(f, exptime=1.5, timestamp="2026-11-30T23:59:59Z", meta=meta)
            tx.end_series()
        sink.join(60)
    assert written["n"] == 6
    want = offline(sim.cube, sim.frames[:6], EngineSettings(window=4))
    files = sorted(tmp_path.glob("*.fits"))
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".part"]
    g = sim.cube.gain_e_per_adu
    rtn = sim.cube.rtn_mask
    for path, w in zip(files, want, strict=True):
        ccd = CCDData.read(path)  # unit and uncertainty without arguments
        np.testing.assert_array_equal(ccd.data, w.data)
        assert ccd.unit == u.adu
        hdr = ccd.header
        assert hdr["DATE-OBS"] == meta["DATE-OBS"]  # the exposure's time, not the send time
        assert hdr["READOUTM"] == "High Gain Mode" and hdr["NINA SEQUENCE TITLE"] == "night 1"
        assert "acquired by N.I.N.A." in str(hdr["HISTORY"]) and hdr["RTNCUBE"] == sim.cube.cube_id
        dq = fits.getdata(path, "DQ")
        np.testing.assert_array_equal((dq & DQF_RTN) != 0, rtn)
        signal = np.maximum((w.data.astype(float) - sim.cube.meanbias_adu) * g, 0)
        np.testing.assert_allclose(ccd.uncertainty.array[~rtn], (np.sqrt(sim.cube.readnoise_e**2 + signal) / g)[~rtn],
                                   rtol=2e-5)
    api.stop_job(status["id"])


def test_a_job_with_states_gives_the_sink_the_dq_of_offline_correction(api, sim, tmp_path):
    """A job created with ``states`` sends each frame's per-pixel decisions: the sink's DQ is then the DQ
    ``rtnstream correct`` writes for the same frames, bit for bit (jumps low / high, vetoes included)."""
    settings = EngineSettings(reference="temporal", window=4)
    status = start_job(api, sim.cube_path, reference="temporal", window=4, states=True)
    frames = sim.frames[:10]
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx:
        sink = threading.Thread(target=lambda: run_sink(rx, tmp_path / "live", max_frames=len(frames),
                                                        progress=False, products=SinkProducts(sim.cube)))
        sink.start()
        with FrameSender(status["endpoints"]["ingest"], "cam") as tx:
            tx.start_series("s1")
            for f in frames:
                tx.send_frame(f)
            tx.end_series()
        sink.join(60)
    stack = tmp_path / "stack.fits"
    fits.PrimaryHDU(frames).writeto(stack)
    correct_files(sim.cube, [stack], tmp_path / "offline", settings, backend="numpy", progress=False)
    offline_dq = fits.getdata(tmp_path / "offline" / "stack.fits", "DQ")
    live = sorted((tmp_path / "live").glob("*.fits"))
    assert len(live) == len(frames)
    jumps = 0
    for k, path in enumerate(live):
        dq = fits.getdata(path, "DQ")
        np.testing.assert_array_equal(dq, offline_dq[k])
        changed = fits.getdata(path) != frames[k]
        np.testing.assert_array_equal((dq & (DQF_LOW | DQF_HIGH)) != 0, changed)
        jumps += int(changed.sum())
    assert jumps > 0  # the comparison saw corrections
    api.stop_job(status["id"])
