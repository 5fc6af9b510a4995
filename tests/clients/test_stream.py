"""Frame sender / receiver: the protocol helpers producers and consumers share."""

import numpy as np
import pytest

from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.exceptions import RTNStreamError
from tests.clients._job import start_job
from tests.service._support import offline, receive_series


def test_sender_needs_an_open_series_and_receiver_a_known_mode(sim):
    with FrameSender("tcp://127.0.0.1:1", "cam", linger_s=0) as tx, pytest.raises(RTNStreamError, match="start"):
        tx.send_frame(sim.frames[0])
    with pytest.raises(ValueError, match="mode"):
        FrameReceiver("tcp://127.0.0.1:1", "dealer")


def test_subscribers_get_the_published_frames(api, sim):
    status = start_job(api, sim.cube_path, push=False, reference="causal", window=4)
    ep = status["endpoints"]
    with FrameReceiver(ep["publish"], "sub") as sub, FrameSender(ep["ingest"], "cam") as tx:
        # a subscription reaches the publisher asynchronously: announce a series until the subscriber hears it
        tx.start_series("probe")
        while (msg := sub.recv(0.1)) is None or msg.header.series != "probe":
            tx.start_series("probe")
        tx.start_series("live")  # ends the probe series: skip what the subscriber got of it
        while (msg := sub.recv(5.0)) is not None and not (msg.header.kind == "start"
                                                          and msg.header.series == "live"):
            pass
        for f in sim.frames[:8]:
            tx.send_frame(f, exptime=3.0, meta={"FILTER": "g"})
        tx.end_series()
        got = receive_series(sub)
    want = offline(sim.cube, sim.frames[:8], EngineSettings(reference="causal", window=4))
    assert [m.header.seq for m in got] == list(range(8))
    for m, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(m.data, w.data)
        assert m.header.meta == {"FILTER": "g"} and m.header.exptime == 3.0 and m.header.series == "live"
    api.stop_job(status["id"])
