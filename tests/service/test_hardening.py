"""Issue 10: the live service as an attacker tries it. One regression test per defect, named after it, each
failing on the main branch before the fix (the defect numbers are the issue's)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import numpy as np
import pytest
import zmq

from rtnstream.clients.control import ServiceError
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.service.pipeline import Pipeline, PipelineConfig
from rtnstream.service.protocol import PROTO
from tests.service._support import SHAPE, counters_add_up, loopback, offline, receive_series, wait_for


@pytest.fixture(scope="module")
def cube_id(api, sim):
    return api.upload_cube(sim.cube_path)["id"]


@pytest.fixture(scope="module")
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _body(cube, **changes):
    return {"camera": "cam1", "cube_id": cube, "ingest": loopback(), "publish": loopback(), "window": 6,
            **changes}


def _raw(meta_json: str = "{}", **fields):
    """A frame message of series "s" with ``fields`` changed; ``meta`` as raw JSON text (json.dumps cannot
    write what a hostile producer can)."""
    h = {"proto": PROTO, "kind": "frame", "camera": "cam1", "series": "s", "seq": 0, "shape": list(SHAPE),
         "dtype": "<u2", **fields}
    text = json.dumps(h)[:-1] + f', "meta": {meta_json}}}'
    return [text.encode(), np.zeros(SHAPE, np.uint16).tobytes()]


def _refused(api, body):
    with pytest.raises(ServiceError) as err:
        api.create_job(**body)
    return err.value


# ---------------------------------------------------------------------------------------------- defect 1
def test_ipc_endpoint_never_deletes_a_file(api, server, cube_id, tmp_path):
    data_dir = server.settings.data_dir
    cube_file = data_dir / "cubes" / f"{cube_id}.fits"
    size = cube_file.stat().st_size
    jobs_before = len(api.list_jobs())
    err = _refused(api, _body(cube_id, ingest=f"ipc://{cube_file}"))  # outside the socket folder
    assert err.status == 422 and err.field == "ingest" and "socket folder" in err.message
    victim = server.settings.ipc_dir / "not-a-socket"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("keep me")
    err = _refused(api, _body(cube_id, publish=f"ipc://{victim}"))  # an existing file that is not a socket
    assert err.status == 409 and err.field == "publish" and "not a socket" in err.message
    assert cube_file.stat().st_size == size and victim.read_text() == "keep me"
    assert len(api.list_jobs()) == jobs_before  # refused before anything was made or recorded


def test_two_jobs_on_one_ipc_path_are_refused_like_tcp(api, server, cube_id):
    path = server.settings.ipc_dir / "ingest-a"
    first = api.create_job(**_body(cube_id, ingest=f"ipc://{path}"))
    err = _refused(api, _body(cube_id, ingest=f"ipc://{path}"))
    assert err.status == 409 and "in use" in err.message
    assert api.get_job(first)["state"] == "running"
    api.stop_job(first)
    again = api.create_job(**_body(cube_id, ingest=f"ipc://{path}"))  # a stale socket may be bound again
    api.stop_job(again)


@pytest.mark.parametrize("endpoint, words", [
    ("tcp://127.0.0.1:99999", "1..65535"), ("tcp://127.0.0.1:0", "1..65535"), ("tcp://:5555", "HOST"),
    ("tcp://bad_host!:5555", "host"), ("inproc://" + "n" * 300, "at most 300"), ("inproc://a b", "inproc"),
    ("ipc://" + "/tmp/" + "x" * 200, "bytes"),
])
def test_malformed_endpoints_are_refused_before_any_socket(api, cube_id, endpoint, words):
    jobs_before = len(api.list_jobs())
    err = _refused(api, _body(cube_id, ingest=endpoint))
    assert err.status == 422 and err.field == "ingest" and words in err.message
    assert len(api.list_jobs()) == jobs_before


# ---------------------------------------------------------------------------------------------- defects 2, 3
@pytest.mark.parametrize("bad, reason", [
    (_raw(dtype="T"), "dtype"),  # NumPy 2's StringDType
    (_raw(exptime=10**400), "header"),
    (_raw('{"k":' * 899 + "1" + "}" * 899), "header"),  # 900 levels: a RecursionError at publish on main
])
def test_one_ingest_message_never_kills_a_job(api, cube_id, sim, bad, reason):
    job = api.create_job(**_body(cube_id, reference="causal", window=4, push=loopback()))
    ep = api.get_job(job)["endpoints"]
    with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam1") as tx:
        tx.start_series("s")
        for k, frame in enumerate(sim.frames[:8]):
            if k == 3:
                tx.send_parts(bad)
            tx.send_frame(frame)
        tx.end_series()
        got = receive_series(rx)
        status = api.wait_until(job, lambda s: s["counters"]["in_flight"] == 0 and s["counters"]["series_finished"])
    c = status["counters"]
    assert status["state"] == "running" and status["error"] is None
    assert c["rejected"] == {reason: 1} and c["frames_in"] == 9 and c["frames_out"] == 8 and counters_add_up(c)
    for m, w in zip(got, offline(sim.cube, sim.frames[:8], EngineSettings(reference="causal", window=4)),
                    strict=True):
        np.testing.assert_array_equal(m.data, w.data)
    final = api.stop_job(job)
    assert final["state"] == "stopped" and final["counters"]["abandoned"] == 0


# ---------------------------------------------------------------------------------------------- defect 4
_CONSUMER = textwrap.dedent("""
    import sys
    from rtnstream.clients.stream import FrameReceiver
    with FrameReceiver(sys.argv[1], "pull", credit=2) as rx, open(sys.argv[2], "a") as log:
        while True:
            m = rx.recv()
            if m.header.kind == "frame":
                log.write(f"{m.header.seq}\\n")
                log.flush()
""")


def test_lossless_consumer_killed_and_restarted_loses_nothing(context, sim, tmp_path):
    n = 200
    frames = np.concatenate([sim.frames] * (n // len(sim.frames) + 1))[:n]
    p = Pipeline("kill", sim.cube, PipelineConfig(ingest=loopback(), publish=loopback(), push=loopback(),
                                                 engine=EngineSettings(reference="causal", window=4),
                                                 backend="numpy"), context)
    p.start()
    push = p.endpoints["push"]
    seen = tmp_path / "seen.txt"
    script = tmp_path / "consumer.py"
    script.write_text(_CONSUMER)
    consumer = subprocess.Popen([sys.executable, str(script), push, str(seen)])
    with FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("kill")
        def send():
            for f in frames:
                tx.send_frame(f)
            tx.end_series()

        sender = threading.Thread(target=send)
        sender.start()
        wait_for(lambda: seen.exists() and len(seen.read_text().split()) >= 60, 60, "the consumer took 60 frames")
        consumer.kill()  # SIGKILL: no clean-up, no last acknowledgement
        consumer.wait(10)
        first = [int(s) for s in seen.read_text().split()]
        assert len(first) < n  # killed mid-series
        with FrameReceiver(push, "pull", context=context) as rx:  # the consumer restarted
            second = [m.header.seq for m in receive_series(rx, timeout_s=60)]
            sender.join(30)
            stopped = p.stop(timeout_s=30)
    c = p.status()["counters"]
    assert stopped and c["abandoned"] == 0 and c["frames_out"] == n and counters_add_up(c)
    assert set(first) | set(second) == set(range(n))  # every frame reached a consumer
    assert second == sorted(second) and len(set(second)) == len(second)  # in order, duplicates dropped
    assert p.status()["outputs"]["lossless"]["reconnects"] >= 1


def test_a_consumer_slow_at_stop_gets_every_frame(context, sim):
    p = Pipeline("slow", sim.cube, PipelineConfig(ingest=loopback(), publish=loopback(), push=loopback(),
                                                 engine=EngineSettings(reference="temporal", window=4),
                                                 backend="numpy"), context)
    p.start()
    got = []
    with FrameReceiver(p.endpoints["push"], "pull", context=context, credit=1) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("slow")
        for f in sim.frames:
            tx.send_frame(f)
        wait_for(lambda: p.status()["counters"]["frames_in"] == len(sim.frames), what="frames in")
        result = []
        stopper = threading.Thread(target=lambda: result.append(p.stop(timeout_s=60)))
        stopper.start()  # stop while the consumer has taken none of them
        while (m := rx.recv(5)) is not None and m.header.kind != "end":
            if m.header.kind == "frame":
                got.append(m.header.seq)
                time.sleep(0.02)  # slow
        stopper.join(60)
    assert result == [True] and got == list(range(len(sim.frames)))
    assert p.status()["counters"]["abandoned"] == 0


def test_a_consumer_that_never_comes_back_is_counted_abandoned(sim, tmp_path):
    from rtnstream.clients.control import ControlClient
    from rtnstream.service.server import BackgroundServer
    from tests.service._support import service_settings

    with BackgroundServer(service_settings(tmp_path, stop_timeout_s=2.0)) as server, \
            ControlClient(server.url) as api:
        cube = api.upload_cube(sim.cube_path)["id"]
        job = api.create_job(**_body(cube, push=loopback(), reference="causal", window=4))
        ep = api.get_job(job)["endpoints"]
        with FrameReceiver(ep["push"], "pull", credit=1) as rx, FrameSender(ep["ingest"], "cam1") as tx:
            tx.start_series("gone")
            for f in sim.frames[:10]:
                tx.send_frame(f)
            assert rx.recv(10).header.kind == "start"  # then the consumer stops reading and goes away
        running = api.wait_until(job, lambda s: s["counters"]["frames_in"] == 10)
        assert running["counters"]["frames_out"] == 0
        final = api.stop_job(job)  # waits stop_timeout_s for the consumer, then gives up
    c = final["counters"]
    assert final["state"] == "failed" and c["abandoned"] == 10 and c["frames_out"] == 0 and counters_add_up(c)
    assert "10 frame(s) abandoned" in final["error"]


def test_acknowledgements_of_another_epoch_acknowledge_nothing(context, sim):
    """A consumer that outlived an earlier job must not acknowledge this job's frames with the old ids."""
    from rtnstream.service.protocol import encode_credit

    p = Pipeline("epoch", sim.cube, PipelineConfig(ingest=loopback(), publish=loopback(), push=loopback(),
                                                  engine=EngineSettings(reference="causal", window=4),
                                                  backend="numpy"), context)
    p.start()
    liar = context.socket(zmq.DEALER)
    liar.connect(p.endpoints["push"])
    liar.send_multipart(encode_credit(b"\x00" * 8, 10**6, 100))  # "I have everything up to 10^6"
    with FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("e")
        for f in sim.frames[:6]:
            tx.send_frame(f)
        tx.end_series()
        wait_for(lambda: p.status()["outputs"]["lossless"]["unacknowledged"] == 6, what="six frames sent")
    liar.close(linger=0)
    assert p.status()["counters"]["frames_out"] == 0
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx:
        assert [m.header.seq for m in receive_series(rx)] == list(range(6))
        assert p.stop(timeout_s=20)


# ---------------------------------------------------------------------------------------------- defect 5
def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_an_idle_subscriber_holds_at_most_the_output_bound(tmp_path):
    """1024 x 1024 frames; a subscriber that never reads. Before the fix PUB's default high-water mark let
    it hold 1000 frames (2 GB) in the service."""
    from rtnstream.clients.control import ControlClient
    from rtnstream.kernels.cube import write_cube
    from rtnstream.kernels.simulate import SensorModel
    from rtnstream.service.server import free_port

    shape = (1024, 1024)
    model = SensorModel.random(shape, rtn_fraction=0.01, seed=1)
    cube_path = write_cube(model.true_cube(), tmp_path / "cube.fits")
    frame = np.full(shape, 500, np.uint16)
    bound_bytes = 64 << 20  # counted for 8-byte pixels: 8 frames of 1024 x 1024
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rtnstream", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "svc"), "--backend", "numpy", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), 60, "service up")
        with ControlClient(url) as api:
            cube = api.upload_cube(cube_path)["id"]
            job = api.create_job("big", cube, loopback(), loopback(), reference="causal", window=4,
                                 output_queue_bytes=bound_bytes)
            ep = api.get_job(job)["endpoints"]
            with FrameSender(ep["ingest"], "big", context=ctx) as tx:
                def series(n):
                    tx.start_series()
                    for _ in range(n):
                        tx.send_frame(frame)
                    tx.end_series()
                    api.wait_until(job, lambda s: s["counters"]["in_flight"] == 0
                                   and s["counters"]["series_finished"] == s["counters"]["series_started"], 120)
                series(40)  # warm up: the engine's and the allocator's buffers
                before = _rss_bytes(proc.pid)
                idle = ctx.socket(zmq.SUB)
                idle.setsockopt(zmq.RCVHWM, 1)
                idle.setsockopt(zmq.RCVBUF, 4096)
                idle.setsockopt(zmq.SUBSCRIBE, b"")
                idle.connect(ep["publish"])
                time.sleep(0.5)  # the subscription reaches the publisher
                series(300)  # 600 MB of frames past a subscriber that reads nothing
                grown = _rss_bytes(proc.pid) - before
                idle.close(linger=0)
        frames_per_queue = bound_bytes // (shape[0] * shape[1] * 8)
        held = frames_per_queue * frame.nbytes
        print(f"\nRSS grew by {grown / 2**20:.1f} MiB with an idle subscriber (bound: {frames_per_queue} frames "
              f"= {held / 2**20:.0f} MiB of uint16 pixels)")
        assert grown <= held + (48 << 20)  # + allocator slack; without the bound it grows by ~600 MB
    finally:
        proc.kill()
        proc.wait(10)
        ctx.term()


def _answers(url):
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------------------------- defect 6
def test_metrics_answer_after_a_huge_seq(api, server, cube_id, sim):
    job = api.create_job(**_body(cube_id, reference="spatial", push=loopback()))
    ep = api.get_job(job)["endpoints"]
    with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam1") as tx:
        tx.start_series("gaps")
        tx.send_parts(_raw(series="gaps", seq=10**400))  # 400 digits: rejected (a 500 of /metrics on main)
        tx.send_frame(sim.frames[0], seq=2**63 - 1)  # the largest seq there is: a gap of 2^63 - 1 frames
        tx.end_series()
        receive_series(rx)
    status = api.wait_until(job, lambda s: s["counters"]["in_flight"] == 0 and s["counters"]["frames_out"] == 1)
    assert status["counters"]["rejected"] == {"header": 1} and status["counters"]["seq_gaps"] == 2**63 - 1
    r = httpx.get(f"{server.url}/metrics")
    gaps = [line for line in r.text.splitlines() if line.startswith("rtnstream_seq_gaps_total") and job in line]
    assert r.status_code == 200 and gaps and float(gaps[0].split()[-1]) == 2.0**63
    api.stop_job(job)


# ---------------------------------------------------------------------------------------------- defect 10
@pytest.mark.parametrize("changes, field", [
    ({"window": 10**9}, "window"), ({"window": 100000}, "window"), ({"window": 82}, "window"),
    ({"spatial_size": 10001}, "spatial_size"), ({"spatial_size": 11}, "spatial_size"),
    ({"ingest": "inproc://" + "x" * 250}, "ingest"), ({"output_queue_frames": 0}, "output_queue_frames"),
    ({"output_queue_bytes": 10}, "output_queue_bytes"), ({"queue_frames": 10**6}, "queue_frames"),
    ({"window": "10"}, "window"), ({"window": 10.0}, "window"), ({"k_var": True}, "k_var"),  # the outside attack
    ({"alpha": 5e-324}, "alpha"), ({"alpha": True}, "alpha"),
])
def test_settings_that_cannot_work_are_refused_before_anything_starts(api, cube_id, changes, field):
    jobs_before = len(api.list_jobs())
    err = _refused(api, _body(cube_id, **changes))
    assert err.status == 422 and err.field == field
    assert len(api.list_jobs()) == jobs_before  # no phantom job, nothing bound


# ---------------------------------------------------------------------------------------------- defect 12
def test_latency_is_measured_from_the_producer_timestamp_too(api, server, cube_id, sim):
    job = api.create_job(**_body(cube_id, reference="causal", window=4, push=loopback()))
    ep = api.get_job(job)["endpoints"]
    sent_at = time.time() - 3.0  # the frames were taken 3 s before they reach the service
    with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam1") as tx:
        tx.start_series("lat")
        for f in sim.frames[:10]:
            tx.send_frame(f, timestamp=sent_at)
        tx.end_series()
        receive_series(rx)
    status = api.wait_until(job, lambda s: s["counters"]["in_flight"] == 0 and s["counters"]["frames_out"] == 10)
    arrival, stamped = status["latency_ms"], status["latency_from_timestamp_ms"]
    assert stamped["samples"] == arrival["samples"] == 10
    assert stamped["p50"] >= 3000 > arrival["p99"]
    text = httpx.get(f"{server.url}/metrics").text
    for source in ("arrival", "timestamp"):
        count = [line for line in text.splitlines()
                 if line.startswith("rtnstream_latency_seconds_count") and f'job="{job}"' in line
                 and f'source="{source}"' in line]
        assert count and float(count[0].split()[-1]) == 10
    below_3s = [line for line in text.splitlines() if line.startswith("rtnstream_latency_seconds_bucket")
                and f'job="{job}"' in line and 'source="timestamp"' in line and 'le="2.5"' in line]
    assert below_3s and float(below_3s[0].split()[-1]) == 0
    api.stop_job(job)


# ---------------------------------------------------------------------------------------------- risks
def test_frames_of_another_camera_are_rejected(api, cube_id, sim):
    job = api.create_job(**_body(cube_id, reference="spatial", push=loopback()))
    ep = api.get_job(job)["endpoints"]
    with FrameReceiver(ep["push"], "pull") as rx, FrameSender(ep["ingest"], "cam1") as tx, \
            FrameSender(ep["ingest"], "intruder") as other:
        tx.start_series("mine")
        other.start_series("theirs")
        for f in sim.frames[:4]:
            tx.send_frame(f)
        time.sleep(0.2)
        tx.end_series()
        got = receive_series(rx)
    status = api.wait_until(job, lambda s: s["counters"]["in_flight"] == 0 and s["counters"]["frames_out"] == 4)
    assert [m.header.camera for m in got] == ["cam1"] * 4
    assert status["counters"]["rejected"] == {"camera": 1}
    api.stop_job(job)


def test_an_oversized_message_is_never_read_into_memory(context, sim):
    """The ingest socket refuses a message part larger than the job's largest frame (ZMQ_MAXMSGSIZE): the
    peer is disconnected before the part is buffered, and the job goes on."""
    from rtnstream.service.protocol import MAX_HEADER_BYTES

    p = Pipeline("big", sim.cube, PipelineConfig(ingest=loopback(), publish=loopback(), push=loopback(),
                                                engine=EngineSettings(reference="spatial"), backend="numpy"),
                 context)
    p.start()
    huge = context.socket(zmq.PUSH)
    huge.connect(p.endpoints["ingest"])
    huge.send_multipart([b"{}", b"\x00" * (max(SHAPE[0] * SHAPE[1] * 8, 4 * MAX_HEADER_BYTES) + 1)])
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("after")
        tx.send_frame(sim.frames[0])
        tx.end_series()
        assert len(receive_series(rx)) == 1
    huge.close(linger=0)
    c = p.status()["counters"]
    assert p.stop(10) and c["frames_in"] == 1 and c["rejected"] == {}


def test_tcp_port_is_never_taken_modulo_65536(context, sim):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from rtnstream.service.endpoints import EndpointError

    with pytest.raises(EndpointError) as err:
        Pipeline("mod", sim.cube, PipelineConfig(ingest=f"tcp://127.0.0.1:{port + 65536}", publish=loopback(),
                                                backend="numpy"), context)
    assert err.value.field == "ingest" and not err.value.conflict


def test_an_acknowledgement_beyond_what_was_sent_acknowledges_only_what_was_sent(context, sim):
    """Found by the outside attack: an ack of 10^6 after 3 messages made 16 frames count as delivered."""
    from rtnstream.service.protocol import decode, encode_credit, parse_delivery

    p = Pipeline("over-ack", sim.cube, PipelineConfig(ingest=loopback(), publish=loopback(), push=loopback(),
                                                     engine=EngineSettings(reference="causal", window=4),
                                                     backend="numpy"), context)
    p.start()
    liar = context.socket(zmq.DEALER)
    liar.connect(p.endpoints["push"])
    liar.send_multipart(encode_credit(None, -1, 3))
    with FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("over")
        for f in sim.frames[:16]:
            tx.send_frame(f)
        tx.end_series()
        got = []
        for _ in range(3):  # the start message and frames 0 and 1: the credit it asked for
            assert liar.poll(10_000)
            delivery, *parts = liar.recv_multipart()
            got.append((parse_delivery(delivery), decode(parts)[0]))
        epoch = got[0][0][0]
        liar.send_multipart(encode_credit(epoch, 10**6, 0))  # "I have everything"
        wait_for(lambda: p.status()["counters"]["frames_out"] >= 2, what="the two frames it took")
        time.sleep(0.3)  # any wrongly acknowledged frame would be counted by now
        assert p.status()["counters"]["frames_out"] == 2
        liar.close(linger=0)
        with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx:
            assert [m.header.seq for m in receive_series(rx)] == list(range(2, 16))
            assert p.stop(timeout_s=20)
    assert p.status()["counters"]["frames_out"] == 16


def test_two_wildcard_ports_on_one_host_are_two_endpoints(api, cube_id):
    job = api.create_job(**_body(cube_id, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*"))
    ep = api.get_job(job)["endpoints"]
    assert ep["ingest"] != ep["publish"] and api.get_job(job)["state"] == "running"
    api.stop_job(job)


def test_a_blank_token_is_refused(tmp_path):
    from pydantic import ValidationError

    from rtnstream.service.settings import ServiceSettings

    with pytest.raises(ValidationError, match="token is blank"):
        ServiceSettings(data_dir=tmp_path, token="  \t")
