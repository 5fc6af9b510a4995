"""The wire protocol fuzzed (hypothesis): the parser never raises anything but ProtocolError, each rejection
has a documented reason, and a live pipeline fed fuzzed messages over a real socket keeps correcting.

Three generators: arbitrary bytes in arbitrary numbers of parts; valid headers with one to three fields
mutated (removed, retyped, out of range) and pixel parts of right or wrong sizes; and, for the oracle
test, exactly one field broken in a known way, whose reason the docs (protocol.md) dictate.
"""

import json
import math
from collections import Counter

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.engine import EngineSettings
from rtnstream.service.pipeline import Pipeline, PipelineConfig
from rtnstream.service.protocol import MAX_SERIES_CHARS, PROTO, REJECT_REASONS, ProtocolError, decode
from tests.service._support import SHAPE, counters_add_up, loopback, offline, receive_series, wait_for

FIELDS = ("proto", "kind", "camera", "series", "seq", "shape", "dtype", "exptime", "timestamp", "meta", "rtn")
SUPPORTED = ["<u2", ">u2", "|u1", "<i2", "<u4", "<i4", "<f4", "<f8", ">f8"]  # protocol.md's list
UNSUPPORTED = ["<c8", "<f2", "|b1", "<i8", "<u8", "U4", "O", "S3", "V2", "<m8", "<M8[s]", "i4,i4",
               "T", "StringDType()", "<U0", "?", "e", "c16", "=u2", "u2", "uint16 ", "<u2 ", "f", "d"]  # NumPy 2 too
NOT_DTYPES = ["", "uint17", "not-a-dtype", "<q9", "{}", "(2)", "(9999999,9999999)i4", "300ma2>m)=(", "\x00"]

# Values at and beyond the limits of every numeric field (protocol.md: integers within int64, floats finite).
NUMERIC_EXTREMES = [2**63, -(2**63) - 1, 10**400, -(10**400), 1e308, -1e308, 5e-324, -0.0, 2**53 + 1]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)


def good_header(kind="frame", shape=SHAPE, dtype="<u2", seq=0, series="s"):
    return {"proto": PROTO, "kind": kind, "camera": "cam", "series": series, "seq": seq, "shape": list(shape),
            "dtype": dtype, "exptime": 0.5, "timestamp": "2026-01-01T00:00:00Z", "meta": {"K": 1}}


def n_bytes(header):
    return math.prod(header["shape"]) * np.dtype(header["dtype"]).itemsize


def check_decode(parts):
    """Decode; the only exception allowed is ProtocolError with a documented reason. Returns the reason or
    None (accepted), and for accepted messages checks what the parser promises about them."""
    try:
        header, data = decode(parts)
    except ProtocolError as exc:
        assert exc.reason in REJECT_REASONS, exc.reason
        assert str(exc)  # a message for the log
        return exc.reason
    assert header.proto == PROTO and header.kind in ("start", "frame", "end")
    assert isinstance(header.camera, str) and 0 < len(header.series) <= MAX_SERIES_CHARS
    if header.kind == "frame":
        assert len(parts) == 2 and header.seq >= 0
        assert data.shape == tuple(header.shape) and data.dtype.str == header.dtype
    else:
        assert len(parts) == 1 and data is None
    return None


# ---------------------------------------------------------------------------------------------- parser
@settings(max_examples=1500, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_bytes_never_escape_as_anything_but_a_protocol_error(parts):
    check_decode(parts)


@st.composite
def mutated_message(draw):
    """A valid message with 1-3 header fields removed or replaced, and a pixel part of some size."""
    header = good_header(kind=draw(st.sampled_from(["start", "frame", "end"])))
    for name in draw(st.lists(st.sampled_from(FIELDS + ("extra",)), min_size=1, max_size=3, unique=True)):
        action = draw(st.sampled_from(["remove", "replace", "dtype"]))
        if action == "remove":
            header.pop(name, None)
        elif action == "dtype":
            header["dtype"] = draw(st.sampled_from(SUPPORTED + UNSUPPORTED + NOT_DTYPES))
        else:
            header[name] = draw(json_values)
    raw = json.dumps(header).encode()
    shape = header.get("shape")
    size = 8
    if isinstance(shape, list) and all(type(n) is int and 0 < n < 1000 for n in shape) and \
            header.get("dtype") in SUPPORTED:
        size = n_bytes(header)
    size = max(0, size + draw(st.sampled_from([0, 0, -1, 1, -2, 2, -size])))
    n_parts = draw(st.sampled_from([1, 2, 2, 3]))
    return [raw, b"\x00" * min(size, 1 << 16), b"tail"][:n_parts]


@settings(max_examples=2500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_message())
def test_structured_but_wrong_headers_are_rejected_by_reason(parts):
    check_decode(parts)


@st.composite
def one_broken_field(draw):
    """A frame (or start / end) message with exactly one defect, and the reason protocol.md gives for it."""
    kind = draw(st.sampled_from(["start", "frame", "end"]))
    header = good_header(kind=kind)
    pixels = [b"\x00" * n_bytes(header)] if kind == "frame" else []
    defect = draw(st.sampled_from(["proto", "kind", "required", "series", "seq", "shape", "dtype_type",
                                   "dtype_value", "not_dtype", "exptime", "not_json_number", "meta", "parts",
                                   "bytes"]))
    reason = "header"
    if defect == "proto":
        header["proto"] = draw(st.sampled_from([None, "rtnstream/0", "rtnstream/2", 1, "RTNSTREAM/1"]))
        reason = "proto"
    elif defect == "kind":
        header["kind"] = draw(json_values.filter(lambda v: v not in ("start", "frame", "end")))
    elif defect == "required":
        header[draw(st.sampled_from(["camera", "series"] + (["seq", "shape", "dtype"] if kind == "frame"
                                                           else [])))] = None
    elif defect == "series":
        header["series"] = draw(st.sampled_from(["", "x" * (MAX_SERIES_CHARS + 1), 7, ["s"], True]))
    elif defect == "seq":
        header["seq"] = draw(st.sampled_from([-1, -2**40, True, 1.5, "3", [0]]))
    elif defect == "shape":
        header["shape"] = draw(st.sampled_from([[SHAPE[0]], [0, SHAPE[1]], [-1, 5], [1.0, 2], [True, 2],
                                                [1, 2, 3], "48x64", 48]))
    elif defect == "dtype_type":
        header["dtype"] = draw(st.sampled_from([2, ["<u2"], True, {"t": 1}]))
    elif defect == "dtype_value":
        header["dtype"] = draw(st.sampled_from(UNSUPPORTED))
        reason = "dtype"
    elif defect == "not_dtype":
        header["dtype"] = draw(st.sampled_from(NOT_DTYPES))
        reason = "dtype"
    elif defect == "exptime":
        header["exptime"] = draw(st.sampled_from([-0.1, 1e300, 10**400, -(10**400), "1s", True, [1]]))
    elif defect == "not_json_number":  # Python writes NaN / Infinity, JSON has neither
        header[draw(st.sampled_from(["exptime", "seq", "timestamp"]))] = draw(
            st.sampled_from([float("inf"), float("-inf"), float("nan")]))
        reason = "json"
    elif defect == "meta":
        header["meta"] = draw(st.sampled_from([[1], "k=v", 3]))
    elif defect == "parts":
        pixels = draw(st.sampled_from([[], [b"x", b"y"]] if kind == "frame" else [[b"x"], [b"x", b"y"]]))
        reason = "parts"
    else:
        assume(kind == "frame")
        pixels = [pixels[0][:draw(st.integers(0, len(pixels[0]) - 1))] or b""]
        reason = "bytes"
    return [json.dumps(header).encode(), *pixels], reason


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(one_broken_field())
def test_each_defect_is_rejected_for_its_documented_reason(case):
    parts, reason = case
    assert check_decode(parts) == reason


def _nested(depth):
    meta = {}
    for _ in range(depth - 1):
        meta = {"k": meta}
    return meta


def _frame_with(**fields):
    return json.dumps({**good_header(shape=(1, 1)), **fields}).encode()


# Messages that make json.loads / np.dtype raise more than their usual errors (RecursionError on deep
# nesting, ValueError on huge integers or odd dtype strings, SyntaxError), or that used to escape the
# decoder and kill a job (issue 10, defects 2, 3 and 6): rejected, never raised.
def _frame_with_dtype(dtype):
    return json.dumps({**good_header(shape=(1, 1)), "dtype": dtype}).encode()


@pytest.mark.parametrize("parts, reason", [
    ([b"[" * 100_000 + b"]" * 100_000], "json"),
    ([b'{"seq": ' + b"9" * 5000 + b"}"], "json"),
    ([_frame_with_dtype("(9999999,9999999)i4"), b"xx"], "dtype"),
    ([_frame_with_dtype("300ma2>m)=("), b"xx"], "dtype"),
    ([_frame_with_dtype(")m,m=2<(b)="), b"xx"], "dtype"),
    ([_frame_with(dtype="T"), b"xx"], "dtype"),
    ([_frame_with(exptime=10**400), b"xx"], "header"),
    ([_frame_with(seq=10**400), b"xx"], "header"),
    ([_frame_with(seq=2**63), b"xx"], "header"),
    ([_frame_with(timestamp=10**400), b"xx"], "header"),
    ([_frame_with(timestamp="not a time"), b"xx"], "header"),
    ([_frame_with(meta=_nested(900)), b"xx"], "header"),
    ([_frame_with(meta={str(i): 0 for i in range(12_000)}), b"xx"], "header"),
    ([_frame_with(meta={"K": 10**30}), b"xx"], "header"),
    ([_frame_with(meta={"K": "x" * 300_000}), b"xx"], "size"),
    ([_frame_with(rtn={"reference": "temporal", "window": "ten"}), b"xx"], "header"),
], ids=["deep-nesting", "huge-integer", "dtype-too-large", "dtype-value-error", "dtype-syntax-error",
        "numpy2-stringdtype", "exptime-400-digits", "seq-400-digits", "seq-beyond-int64", "timestamp-huge",
        "timestamp-not-iso", "meta-900-deep", "meta-20000-values", "meta-beyond-int64", "header-300kB",
        "rtn-malformed"])
def test_pathological_headers_are_rejected_not_raised(parts, reason):
    assert check_decode(parts) == reason


@st.composite
def extreme_message(draw):
    """A frame whose one field takes an extreme value: numbers at and past int64 / float limits, NumPy 2
    dtype strings, ``meta`` deep, wide or huge, long strings. Returns the parts and the expected reason (None
    when the value is within the limits and the message must be accepted)."""
    header = good_header(shape=(1, 1))
    target = draw(st.sampled_from(["seq", "exptime", "timestamp", "shape", "dtype", "meta_depth",
                                   "meta_width", "meta_number", "camera", "header_size"]))
    reason = "header"
    if target in ("seq", "exptime", "timestamp"):
        value = draw(st.sampled_from(NUMERIC_EXTREMES))
        header[target] = value
        limits = {"seq": (0, 2**63 - 1), "exptime": (0, 1e7), "timestamp": (0, 1e11)}[target]
        ok = (type(value) is int or target != "seq") and limits[0] <= value <= limits[1]
        reason = None if ok else "header"
    elif target == "shape":
        header["shape"] = [draw(st.sampled_from([2**17 + 1, 2**31, 2**63, 10**40])), 1]
    elif target == "dtype":
        header["dtype"] = draw(st.sampled_from(UNSUPPORTED + NOT_DTYPES))
        reason = "dtype"
    elif target == "meta_depth":
        depth = draw(st.integers(1, 40))
        header["meta"] = _nested(depth)
        reason = None if depth <= 8 else "header"
    elif target == "meta_width":
        n = draw(st.sampled_from([10, 9_999, 10_001, 50_000]))
        header["meta"] = {str(i): 0 for i in range(n)}
        reason = "size" if len(json.dumps(header)) > 256 * 1024 else None if n < 10_000 else "header"
    elif target == "meta_number":
        value = draw(st.sampled_from(NUMERIC_EXTREMES))
        header["meta"] = {"NUM": value}
        reason = "header" if type(value) is int and not -(2**63) <= value < 2**63 else None
    elif target == "camera":
        n = draw(st.sampled_from([0, 1, 128, 129, 10_000]))
        header["camera"] = "c" * n
        reason = None if 0 < n <= 128 else "header"
    else:
        n = draw(st.sampled_from([200_000, 262_000, 300_000]))
        header["meta"] = {"PAD": "x" * n}
        reason = None if len(json.dumps(header)) <= 256 * 1024 else "size"
    pixels = b"\x00" * n_bytes(header) if target not in ("shape", "dtype") else b"xx"
    return [json.dumps(header).encode(), pixels], reason


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(extreme_message())
def test_extreme_values_are_accepted_within_the_limits_and_rejected_beyond(case):
    parts, reason = case
    assert check_decode(parts) == reason


# ---------------------------------------------------------------------------------------------- live
@pytest.fixture(scope="module")
def live(sim):
    """A running pipeline (causal reference, W = 4) with its lossless output and a producer, over TCP."""
    context = zmq.Context()
    settings_ = EngineSettings(reference="causal", window=4)
    p = Pipeline("fuzz", sim.cube, PipelineConfig(ingest=loopback(), publish=loopback(), push=loopback(),
                                                  engine=settings_, backend="numpy"), context)
    p.start()
    with FrameReceiver(p.endpoints["push"], "pull", context=context) as rx, \
            FrameSender(p.endpoints["ingest"], "cam", context=context) as tx:
        yield p, rx, tx, settings_
        assert p.stop(timeout_s=10)  # while the consumer is still there to take what is flushed
    context.term()


@st.composite
def bad_for_the_pipeline(draw, series, first_frame_sent):
    """A message the open series ``series`` must reject, and the reason it will be counted under (a dtype
    change needs the series' first frame to have set its dtype)."""
    sources = ["decode", "decode", "extreme", "shape", "other_series"] + (["dtype_change"] if first_frame_sent
                                                                         else [])
    source = draw(st.sampled_from(sources))
    if source == "extreme":  # accepted by the parser, its 1 x 1 frame is then refused for its shape
        parts, reason = draw(extreme_message())
        return parts, reason or "shape"
    if source == "decode":
        parts = draw(mutated_message() | st.lists(st.binary(max_size=32), min_size=1, max_size=3))  # ZeroMQ
        # cannot send a message of no parts
        try:
            decode(parts)
        except ProtocolError as exc:
            return parts, exc.reason
        assume(False)  # a mutation that left the message valid would join the series: not a bad message
    if source == "shape":
        shape = draw(st.sampled_from([(SHAPE[1], SHAPE[0]), (SHAPE[0], SHAPE[1] + 1), (1, 1)]))
        h = good_header(shape=shape, series=series, seq=draw(st.integers(0, 100)))
        return [json.dumps(h).encode(), b"\x00" * n_bytes(h)], "shape"
    if source == "other_series":
        kind = draw(st.sampled_from(["frame", "end"]))
        h = good_header(kind=kind, series=series + "-other")
        return [json.dumps(h).encode()] + ([b"\x00" * n_bytes(h)] if kind == "frame" else []), "no_series"
    h = good_header(dtype=draw(st.sampled_from(["<f4", "<i4", ">u2"])), series=series)
    return [json.dumps(h).encode(), b"\x00" * n_bytes(h)], "dtype"


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None,
          derandomize=True, phases=[Phase.generate])  # no shrinking: each example is a whole live series
@given(data=st.data())
def test_a_live_pipeline_counts_each_fuzzed_message_and_corrects_the_next_good_frame(live, sim, data):
    p, rx, tx, engine_settings = live
    series = f"fuzz-{data.draw(st.integers(0, 10**9))}"
    good = sim.frames[:12]
    bursts = [data.draw(st.lists(bad_for_the_pipeline(series, k > 0), max_size=6)) for k in range(len(good))]
    before = p.status()["counters"]
    tx.start_series(series)
    for frame, burst in zip(good, bursts, strict=True):
        for parts, _ in burst:
            tx.send_parts(parts)
        tx.send_frame(frame)  # right after the bad burst: it must come out corrected as if alone
    tx.end_series()
    got = receive_series(rx)
    wait_for(lambda: p.status()["counters"]["in_flight"] == 0, what="every frame acknowledged")
    after = p.status()["counters"]
    assert p.alive
    expected = Counter(reason for burst in bursts for _, reason in burst)
    rejected = Counter(after["rejected"]) - Counter(before["rejected"])
    assert rejected == expected
    assert after["frames_in"] - before["frames_in"] == len(good) + sum(expected.values())
    assert after["frames_out"] - before["frames_out"] == len(good)
    assert counters_add_up(after) and after["in_flight"] == 0 and after["abandoned"] == 0
    want = offline(sim.cube, good, engine_settings)  # the good frames alone, as if nothing else had come
    assert [m.header.seq for m in got] == list(range(len(good)))
    for m, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(m.data, w.data)
        assert m.header.rtn.corrected == w.corrected
