"""Wire protocol rtnstream/1: round trips, zero-copy decoding, and every rejection reason."""

import json

import numpy as np
import pytest
import zmq

from rtnstream.service.protocol import (
    PROTO,
    REJECT_REASONS,
    Header,
    ProtocolError,
    RTNInfo,
    decode,
    encode,
    frame_header,
)


def _frame(dtype="<u2"):
    return (np.arange(12, dtype=np.int64).reshape(3, 4) * 1000).astype(dtype)


def _good_header(**changes):
    d = {"proto": PROTO, "kind": "frame", "camera": "c", "series": "s", "seq": 0, "shape": [3, 4],
         "dtype": "<u2", "exptime": 1.0, "timestamp": "2026-01-01T00:00:00Z"}
    d.update(changes)
    return json.dumps(d).encode()


def test_frame_round_trip_keeps_header_and_pixels():
    data = _frame()
    h = frame_header("cam", "night-1", 7, data, exptime=2.5, timestamp=1.7e9, meta={"FILTER": "r"})
    got_h, got = decode([bytes(p) for p in encode(h, data)])
    assert got_h == h
    np.testing.assert_array_equal(got, data)
    assert got.dtype == data.dtype


def test_output_header_carries_rtn_object():
    info = RTNInfo("temporal", 10, 0.003, 1.5, 5, "0123456789abcdef", low=3, high=1, vetoed=2)
    h = frame_header("cam", "s", 0, _frame()).with_rtn(info)
    got_h, _ = decode([bytes(p) for p in encode(h, _frame())])
    assert got_h.rtn == info
    assert json.loads(h.to_json())["rtn"]["cube"] == "0123456789abcdef"


def test_decode_does_not_copy_received_pixels():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://zero-copy")
    b.connect("inproc://zero-copy")
    data = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100)  # above pyzmq's copy threshold
    a.send_multipart(encode(frame_header("c", "s", 0, data), data))
    parts = b.recv_multipart(copy=False)
    _, got = decode(parts)
    assert np.shares_memory(got, np.frombuffer(parts[1].buffer, dtype=np.uint8))
    np.testing.assert_array_equal(got, data)
    a.close(), b.close(), ctx.term()


def test_big_endian_frames_are_accepted():
    data = _frame(">u2")
    h, got = decode([bytes(p) for p in encode(frame_header("c", "s", 0, data), data)])
    assert h.dtype == ">u2"
    np.testing.assert_array_equal(got.astype(np.uint16), data.astype(np.uint16))


@pytest.mark.parametrize("parts, reason, words", [
    ([], "parts", "empty"),
    ([b"\xff\xfe not utf8"], "json", "JSON"),
    ([b"{not json"], "json", "JSON"),
    ([b"[1, 2]"], "json", "object"),
    ([_good_header(proto="rtnstream/2"), _frame().tobytes()], "proto", "rtnstream/2"),
    ([_good_header(proto=None), _frame().tobytes()], "proto", "proto"),
    ([_good_header(kind="flush"), _frame().tobytes()], "header", "kind"),
    ([_good_header(camera=None), _frame().tobytes()], "header", "camera"),
    ([_good_header(series=""), _frame().tobytes()], "header", "series"),
    ([_good_header(seq=-1), _frame().tobytes()], "header", "seq"),
    ([_good_header(seq=True), _frame().tobytes()], "header", "seq"),
    ([_good_header(shape=[3]), _frame().tobytes()], "header", "shape"),
    ([_good_header(shape=[3, 0]), _frame().tobytes()], "header", "shape"),
    ([_good_header(exptime=-1), _frame().tobytes()], "header", "exptime"),
    ([_good_header(meta=[1]), _frame().tobytes()], "header", "meta"),
    ([_good_header(dtype="<c8"), _frame().tobytes()], "dtype", "<c8"),
    ([_good_header(dtype="not-a-dtype"), _frame().tobytes()], "dtype", "not-a-dtype"),
    ([_good_header(), _frame().tobytes()[:-2]], "bytes", "22 bytes"),
    ([_good_header()], "parts", "2 part"),
    ([_good_header(), _frame().tobytes(), b"extra"], "parts", "2 part"),
    ([json.dumps({"proto": PROTO, "kind": "end", "camera": "c", "series": "s"}).encode(), b"x"], "parts",
     "1 part"),
])
def test_malformed_messages_are_rejected_with_their_reason(parts, reason, words):
    with pytest.raises(ProtocolError) as err:
        decode(parts)
    assert err.value.reason == reason
    assert reason in REJECT_REASONS
    assert words in str(err.value)


def test_encode_refuses_pixels_that_do_not_match_the_header():
    h = frame_header("c", "s", 0, _frame())
    with pytest.raises(ValueError, match="shape"):
        encode(h, _frame().T.copy())
    with pytest.raises(ValueError, match="data must be None"):
        encode(Header("start", "c", "s"), _frame())
    with pytest.raises(ValueError, match="needs its pixels"):
        encode(h)
