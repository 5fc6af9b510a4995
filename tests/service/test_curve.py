"""CURVE on the job sockets (issue 10, risk "no authentication on the ZeroMQ sockets"): with the service's
keys set, only producers and consumers whose public certificates the service admits get through."""

import numpy as np
import pytest
import zmq
import zmq.auth

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.service.curve import CurveClient
from rtnstream.service.server import BackgroundServer
from rtnstream.service.settings import ServiceSettings
from tests.service._support import loopback, offline, receive_series, service_settings, wait_for

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    admitted, other = root / "admitted", root / "other"
    admitted.mkdir()
    other.mkdir()
    _, service_secret = zmq.auth.create_certificates(root, "service")
    _, client_secret = zmq.auth.create_certificates(admitted, "camera")
    _, stranger_secret = zmq.auth.create_certificates(other, "stranger")
    service_public = root / "service.key"
    return {"service_secret": service_secret, "admitted": admitted,
            "client": CurveClient.from_files(client_secret, service_public),
            "stranger": CurveClient.from_files(stranger_secret, service_public)}


def test_only_admitted_clients_send_and_receive(sim, keys, tmp_path):
    settings = service_settings(tmp_path, zmq_curve_secret_file=keys["service_secret"],
                                zmq_curve_clients_dir=keys["admitted"])
    with BackgroundServer(settings) as server, ControlClient(server.url) as api:
        cube = api.upload_cube(sim.cube_path)["id"]
        job = api.create_job("cam", cube, loopback(), loopback(), push=loopback(), reference="causal", window=4)
        ep = api.get_job(job)["endpoints"]
        ctx = zmq.Context()
        try:
            with FrameSender(ep["ingest"], "cam", context=ctx, linger_s=0) as plain, \
                    FrameSender(ep["ingest"], "cam", context=ctx, linger_s=0, curve=keys["stranger"]) as stranger:
                for tx in (plain, stranger):  # neither is admitted: nothing they send reaches the job
                    tx.start_series("intruder")
                    tx.send_frame(sim.frames[0])
                    tx.end_series()
                with FrameReceiver(ep["publish"], "sub", context=ctx, curve=keys["stranger"]) as eavesdropper, \
                        FrameReceiver(ep["push"], "pull", context=ctx, curve=keys["client"]) as rx, \
                        FrameSender(ep["ingest"], "cam", context=ctx, curve=keys["client"]) as tx:
                    tx.start_series("night")
                    for f in sim.frames:
                        tx.send_frame(f)
                    tx.end_series()
                    got = receive_series(rx)
                    assert eavesdropper.recv(0.5) is None
            wait_for(lambda: api.get_job(job)["counters"]["in_flight"] == 0, what="frames acknowledged")
            c = api.get_job(job)["counters"]
        finally:
            ctx.destroy(linger=0)
        assert c["frames_in"] == c["frames_out"] == len(sim.frames) and c["series_started"] == 1
        for m, w in zip(got, offline(sim.cube, sim.frames, EngineSettings(reference="causal", window=4)),
                        strict=True):
            np.testing.assert_array_equal(m.data, w.data)
        api.stop_job(job)


def test_curve_settings_come_in_pairs(keys, tmp_path):
    with pytest.raises(ValueError, match="zmq_curve_secret_file and zmq_curve_clients_dir"):
        ServiceSettings(data_dir=tmp_path, zmq_curve_secret_file=keys["service_secret"])
