"""Large frames through the service: ipc, several ZeroMQ I/O threads, zero-copy receive and send, buffers
never aliased; the io-threads setting and its checks."""

import threading
import time

import numpy as np
import pydantic
import pytest
import zmq

from rtnstream.clients.stream import FrameReceiver, FrameSender, Message
from rtnstream.kernels.engine import EngineSettings
from rtnstream.kernels.simulate import Scene, SensorModel
from rtnstream.service.outputs import OutputBounds
from rtnstream.service.pipeline import Pipeline, PipelineConfig
from rtnstream.service.protocol import decode, decode_output, encode, encode_credit, frame_header
from rtnstream.service.server import BackgroundServer
from rtnstream.service.settings import ServiceSettings
from rtnstream.service.zmq_io import FULL_FRAME_BYTES, io_threads_for
from tests.service._support import counters_add_up, offline, receive_series, service_settings

LARGE = (1024, 1536)  # 3 MB uint16 frames: far beyond libzmq's 8 kB batches, so each has its own buffer
N_LARGE = 14
SETTINGS = EngineSettings(reference="temporal", window=4)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    model = SensorModel.random(LARGE, rtn_fraction=0.05, seed=21)
    scene = Scene.make("stars", LARGE, sky_e=2.0, n_stars=6, seed=4)
    frames = np.stack([f.data for f in model.frames(N_LARGE, scene, seed=8)])
    cube = model.true_cube()
    want = offline(cube, frames, SETTINGS)  # the engine's own output, computed without the service
    return cube, frames, want, tmp_path_factory.mktemp("ipc")


@pytest.fixture
def context():
    ctx = zmq.Context(io_threads=3)
    yield ctx
    ctx.destroy(linger=0)  # closes what a failed test left open


def ipc_pipeline(context, cube, folder, tag, **kw):
    ep = {name: f"ipc://{folder}/{tag}-{name}" for name in ("ingest", "publish", "push")}
    config = PipelineConfig(**ep, engine=SETTINGS, backend="numpy", socket_dir=folder, **kw)
    p = Pipeline(tag, cube, config, context)
    p.start()
    return p


def test_large_frames_over_ipc_with_several_io_threads_arrive_bit_exact_and_accounted(large, context):
    cube, frames, want, folder = large
    p = ipc_pipeline(context, cube, folder, "exact")
    with FrameReceiver(p.endpoints["push"], "pull", io_threads=2) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", io_threads=2, sndhwm=2) as tx:
        assert rx._context.get(zmq.IO_THREADS) == tx._context.get(zmq.IO_THREADS) == 2
        tx.start_series("big")
        for f in frames:
            tx.send_frame(f)
        tx.end_series()
        got = receive_series(rx, timeout_s=60.0)
    assert p.stop()
    assert [m.header.seq for m in got] == list(range(N_LARGE))
    for m, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(m.data, w.data)
        assert (m.header.rtn.low, m.header.rtn.high) == (w.counts.low, w.counts.high)
    assert sum(w.counts.low + w.counts.high for w in want) > 0  # corrections happened: the check is not empty
    c = p.status()["counters"]
    assert c["frames_in"] == c["frames_out"] == N_LARGE and c["in_flight"] == 0 and counters_add_up(c)


def test_output_held_for_a_consumer_is_never_overwritten_by_later_frames(large, context):
    """Frames wait in the service for a slow subscriber (PUB queue) and for a lossless consumer that goes
    away and comes back (they are sent again from the lossless buffer) while later frames are received and
    corrected: every copy that reaches a consumer is still that frame's own output."""
    cube, frames, want, folder = large
    p = ipc_pipeline(context, cube, folder, "alias", output=OutputBounds(3, 1 << 30))
    sub = FrameReceiver(p.endpoints["publish"], "sub", rcvhwm=1, context=context)
    time.sleep(0.3)  # the subscription reaches the PUB socket before the series starts
    sender_done = threading.Event()

    def produce():
        with FrameSender(p.endpoints["ingest"], "cam", context=context, sndhwm=1) as tx:
            tx.start_series("alias")
            for f in frames:
                tx.send_frame(f)
            tx.end_series()
        sender_done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    got = []
    with FrameReceiver(p.endpoints["push"], "pull", credit=2, context=context) as first:
        for _ in range(4):  # start + 3 frames, then this consumer goes away (acknowledging what it took)
            msg = first.recv(30.0)
            assert msg is not None
            got.append(msg)
    # a consumer that takes 3 messages and goes away without acknowledging any: they must come again
    dealer = context.socket(zmq.DEALER)
    dealer.connect(p.endpoints["push"])
    deadline = time.monotonic() + 30
    while len(got) < 7 and time.monotonic() < deadline:
        if not dealer.poll(500):  # the credit protocol's heartbeat: say it again until served
            dealer.send_multipart(encode_credit(None, -1, 3))
            continue
        _, *parts = dealer.recv_multipart(copy=False)
        got.append(Message(*decode_output(parts)))
    dealer.close(linger=0)
    assert len(got) == 7
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as third:
        rest = receive_series(third, timeout_s=60.0)
    producer.join(30)
    held = [m for m in sub.frames(1.0) if m.header.kind == "frame"]  # before stop: PUB does not linger
    sub.close()
    assert sender_done.is_set() and p.stop()
    lossless = [m for m in got if m.header.kind == "frame"] + rest
    seqs = sorted({m.header.seq for m in lossless})
    assert seqs == list(range(N_LARGE))
    for m in lossless:
        np.testing.assert_array_equal(m.data, want[m.header.seq].data, err_msg=f"frame {m.header.seq}")
    assert held  # the subscriber got frames that waited in the service's PUB queue
    for m in held:
        np.testing.assert_array_equal(m.data, want[m.header.seq].data, err_msg=f"published {m.header.seq}")
    c = p.status()["counters"]
    assert c["frames_out"] == N_LARGE and counters_add_up(c) and p.status()["outputs"]["lossless"]["reconnects"]


def test_a_full_frame_is_received_over_ipc_writable_and_without_a_copy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ipcfull")
    frame = np.random.default_rng(0).integers(0, 65536, (6388, 9576), dtype=np.uint16)
    assert frame.nbytes == FULL_FRAME_BYTES
    ctx = zmq.Context(io_threads=4)
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind(f"ipc://{folder}/full")
        push.connect(f"ipc://{folder}/full")
        for seq in range(2):
            push.send_multipart(encode(frame_header("cam", "s", seq, frame), frame), copy=False)
        received = [pull.recv_multipart(copy=False) for _ in range(2)]
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
    (h0, a), (h1, b) = (decode(parts, writable=True) for parts in received)
    wire = np.frombuffer(received[0][1].buffer, np.uint16).reshape(frame.shape)
    assert h0.seq == 0 and h1.seq == 1 and a.flags.writeable and b.flags.writeable
    assert np.shares_memory(a, wire) and not np.shares_memory(a, b)  # the message's own buffer, no copy
    np.testing.assert_array_equal(a, frame)
    np.testing.assert_array_equal(b, frame)
    del received, wire
    a[0, :4] = 7  # the array keeps its message alive, and writes reach only its own frame
    assert (a[0, :4] == 7).all() and np.array_equal(b, frame)
    _, ro = decode([encode(frame_header("cam", "s", 0, frame[:8, :8].copy()), frame[:8, :8].copy())[0],
                    frame[:8, :8].tobytes()], writable=True)
    assert ro.flags.writeable  # bytes (shared by Python) are copied, never written into


def test_an_inproc_producer_keeps_its_own_frames_unchanged(large, context):
    """inproc hands the producer's own memory over: the pipeline copies it, so in-place correction could
    never write into the producer's frames."""
    cube, frames, want, _ = large
    ep = {name: f"inproc://own-{name}" for name in ("ingest", "publish", "push")}
    p = Pipeline("inproc", cube, PipelineConfig(**ep, engine=SETTINGS, backend="numpy"), context)
    assert p._copy_received
    p.start()
    sent = frames.copy()
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        tx.start_series("own")
        for f in sent:
            tx.send_frame(f)
        tx.end_series()
        got = receive_series(rx, timeout_s=60.0)
    assert p.stop()
    np.testing.assert_array_equal(sent, frames)
    for m, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(m.data, w.data)


def test_io_threads_default_follows_the_byte_rate():
    assert io_threads_for(0) == 1
    assert io_threads_for(0.9e9, cpus=16) == 1 and io_threads_for(1.1e9, cpus=16) == 2
    assert io_threads_for(2 * 20 * FULL_FRAME_BYTES, cpus=16) == 5  # 20 full frames/s in and out: 4.9 GB/s
    assert io_threads_for(1e12, cpus=6) == 3 and io_threads_for(1e12, cpus=2) == 1  # at most half the CPUs
    s = ServiceSettings(zmq_stream_bytes_per_s=1.5e9)
    assert s.io_threads == io_threads_for(3e9)
    assert ServiceSettings(zmq_io_threads=7, zmq_stream_bytes_per_s=1.5e9).io_threads == 7
    with pytest.raises(ValueError, match="bytes_per_s"):
        io_threads_for(float("nan"))


def test_the_service_context_gets_the_configured_io_threads(tmp_path):
    with BackgroundServer(service_settings(tmp_path, zmq_io_threads=3)) as srv:
        assert srv.server.config.app.state.manager.context.get(zmq.IO_THREADS) == 3


@pytest.mark.parametrize("bad", [0, -1, 65, "many", 2.5])
def test_bad_io_threads_settings_are_refused_naming_the_setting(bad, monkeypatch):
    with pytest.raises(pydantic.ValidationError, match="zmq_io_threads"):
        ServiceSettings(zmq_io_threads=bad)
    monkeypatch.setenv("RTNSTREAM_ZMQ_IO_THREADS", str(bad))
    with pytest.raises(pydantic.ValidationError, match="zmq_io_threads"):
        ServiceSettings()


@pytest.mark.parametrize("bad", [0, 0.0, -2, float("inf"), "fast"])
def test_bad_stream_rates_are_refused_naming_the_setting(bad):
    with pytest.raises(pydantic.ValidationError, match="zmq_stream_bytes_per_s"):
        ServiceSettings(zmq_stream_bytes_per_s=bad)


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (65, ValueError), (True, TypeError),
                                            ("2", TypeError), (2.0, TypeError)])
def test_clients_refuse_bad_io_threads_naming_them(bad, error):
    for make in (lambda: FrameSender("ipc:///nonexistent/x", "cam", io_threads=bad),
                 lambda: FrameReceiver("ipc:///nonexistent/x", "pull", io_threads=bad)):
        with pytest.raises(error, match="io_threads"):
            make()


def test_clients_refuse_a_context_together_with_io_threads():
    ctx = zmq.Context()
    try:
        with pytest.raises(ValueError, match="io_threads"):
            FrameSender("ipc:///nonexistent/x", "cam", context=ctx, io_threads=2)
    finally:
        ctx.term()
