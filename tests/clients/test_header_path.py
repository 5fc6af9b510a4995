"""The live path carries the whole header: replay and the simulated camera against a running service."""

import json
import warnings
from datetime import UTC, datetime

import numpy as np
from astropy.io import fits

from rtnstream.clients.camera import run_camera
from rtnstream.clients.replay import header_meta, replay_files
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.simulate import Scene
from rtnstream.service.protocol import MAX_HEADER_BYTES, unix_time
from tests.clients._job import start_job
from tests.service._support import SHAPE, offline, receive_series


def nina_light(path, frame, k: int, hierarch: bool = True) -> fits.Header:
    """Write a light frame with the header N.I.N.A. writes (plus HIERARCH and HISTORY cards)."""
    hdr = fits.Header()
    hdr["IMAGETYP"] = ("LIGHT", "Type of exposure")
    hdr["EXPOSURE"] = (2.0, "[s] Exposure duration")
    hdr["EXPTIME"] = (2.0, "[s] Exposure duration")
    hdr["DATE-OBS"] = (f"2026-03-01T21:04:{10 + 2 * k:02d}.117", "Time of observation (UTC)")
    hdr["RA"] = (83.822083, "[deg] RA of telescope")
    hdr["DEC"] = (-5.391111, "[deg] Declination of telescope")
    hdr["OBJECT"] = ("M42", "Name of the object of interest")
    hdr["READOUTM"] = ("High Gain Mode 16bit", "Sensor readout mode")
    hdr["GAIN"] = (56, "Sensor gain")
    hdr["EGAIN"] = (0.3067, "[e-/ADU] Electrons per A/D unit")
    hdr["XBINNING"] = 1
    hdr["SWCREATE"] = ("N.I.N.A. 3.1.2.9001 (x64)", "Software that created this file")
    if hierarch:
        hdr["HIERARCH NINA FOCUSER POSITION"] = 12345
        hdr["HIERARCH ESO DET DIT"] = 2.0
    hdr.add_history("calibrated: none")
    hdr.add_history(f"frame {k} of the night")
    hdr.add_comment("FITS (Flexible Image Transport System) format is defined in 'Astronomy")
    fits.PrimaryHDU(frame, header=hdr).writeto(path)
    return hdr


def test_replay_carries_every_card_and_date_obs_to_the_output(api, sim, tmp_path):
    files = [tmp_path / f"LIGHT_{k}.fits" for k in range(10)]
    for k, path in enumerate(files):
        nina_light(path, sim.frames[k], k)
    status = start_job(api, sim.cube_path, reference="temporal", window=4)
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx, \
            FrameSender(status["endpoints"]["ingest"], "cam") as tx:
        _, sent = replay_files(tx, files, progress=False)
        got = receive_series(rx)
    api.stop_job(status["id"])
    assert sent == len(got) == 10
    for k, (m, want) in enumerate(zip(got, offline(sim.cube, sim.frames[:10], EngineSettings(window=4)),
                                      strict=True)):
        np.testing.assert_array_equal(m.data, want.data)
        meta = m.header.meta
        assert (meta["RA"], meta["DEC"], meta["EXPOSURE"], meta["EGAIN"]) == (83.822083, -5.391111, 2.0, 0.3067)
        assert meta["READOUTM"] == "High Gain Mode 16bit" and meta["GAIN"] == 56 and meta["OBJECT"] == "M42"
        assert meta["NINA FOCUSER POSITION"] == 12345 and meta["ESO DET DIT"] == 2.0
        assert meta["HISTORY"] == ["calibrated: none", f"frame {k} of the night"]
        assert meta["COMMENT"][0].startswith("FITS (Flexible")
        assert (meta["FILENAME"], meta["FRAMENUM"]) == (f"LIGHT_{k}.fits", 0)
        # the exposure's time, not the send time, travels as the frame's timestamp
        assert m.header.timestamp == meta["DATE-OBS"] == f"2026-03-01T21:04:{10 + 2 * k:02d}.117"
        assert m.header.exptime == 2.0
        # every card of the file is there and can be written back (HIERARCH as HIERARCH)
        original = fits.getheader(files[k])
        for card in original.cards:
            if card.keyword not in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "COMMENT",
                                    "HISTORY", "BZERO", "BSCALE"):
                assert meta[card.keyword] == card.value, card.keyword
        back = fits.Header()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)  # "a HIERARCH card will be created"
            for key, value in meta.items():
                if not isinstance(value, list):
                    back[key] = value
        assert "HIERARCH ESO DET DIT = 2.0" in back.tostring()


def test_header_meta_stays_within_the_protocol_bound_and_says_what_it_left_out(tmp_path):
    hdr = nina_light(tmp_path / "big.fits", np.zeros(SHAPE, np.uint16), 0, hierarch=False)
    for i in range(6000):  # a long processing history: about 400 KiB of cards
        hdr.add_history(f"step {i:05d}: " + "x" * 50)
    hdr["BADVALUE"] = complex(1.0, 2.0)
    meta, left_out = header_meta(hdr)
    assert len(json.dumps(meta).encode()) < MAX_HEADER_BYTES - 1024
    assert meta["RA"] == 83.822083 and meta["READOUTM"] == "High Gain Mode 16bit"
    assert 0 < len(meta["HISTORY"]) < 6002 and meta["HISTORY"][0] == "calibrated: none"  # the oldest kept
    assert any("HISTORY lines (header over the protocol's bound)" in line for line in left_out)
    assert any(line.startswith("BADVALUE = ") for line in left_out) and "BADVALUE" not in meta


def test_simulated_camera_sends_date_obs_exptime_and_camera_keywords(api, sim):
    status = start_job(api, sim.cube_path, reference="causal", window=4)
    before = datetime.now(UTC).timestamp()
    with FrameReceiver(status["endpoints"]["push"], "pull") as rx, \
            FrameSender(status["endpoints"]["ingest"], "cam") as tx:
        run_camera(tx, sim.model, 6, scene=Scene.make("stars", SHAPE, sky_e=2.0, seed=1), exptime_s=1.5)
        got = receive_series(rx)
    api.stop_job(status["id"])
    assert len(got) == 6
    starts = []
    for m in got:
        meta = m.header.meta
        assert m.header.timestamp == meta["DATE-OBS"] and meta["EXPTIME"] == m.header.exptime == 1.5
        assert (meta["IMAGETYP"], meta["EGAIN"], meta["READOUTM"], meta["XBINNING"]) == \
            ("LIGHT", sim.model.gain_e_per_adu, "simulated", 1)
        assert meta["INSTRUME"] == "rtnstream simulated camera"
        starts.append(unix_time(meta["DATE-OBS"]))
    # the exposure began exptime before the frame was sent
    assert before - 1.5 - 0.01 <= starts[0] and starts == sorted(starts)
