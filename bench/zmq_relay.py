"""Raw ZeroMQ at full frame: producer -> relay -> consumer, frames/s and GB/s a hop, 1 vs N I/O threads.

The service's transport without its engine: a producer thread PUSHes full frames (zero copy) to a relay
thread that PULLs each one (zero copy) and PUSHes it on to a consumer thread, as a job's pipeline does;
each has its own ZeroMQ context, as separate processes would. Run for ``tcp`` (loopback) and ``ipc``, each
with every I/O-thread count of ``--io-threads`` in every context. What it shows: where the transport
limits the service (a connection lives on one I/O thread, so one stream in and one out need at least two
threads in the relay's context), and what the CPUs allow. Also printed: what a receive costs when the
message is copied out of ZeroMQ's buffer into a pooled one (``recv_into``) instead of used in place.

    python bench/zmq_relay.py [--shape 6388 9576] [--frames 24] [--io-threads 1 2 4] [--json FILE]

Full frames take about 1 GB of memory here: run it under ``flock /tmp/heavy.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from rtnstream.service.server import free_port


def _endpoint(transport: str, folder: Path, name: str) -> str:
    return f"ipc://{folder / name}" if transport == "ipc" else f"tcp://127.0.0.1:{free_port()}"


def relay_run(frame: np.ndarray, n_frames: int, transport: str, io_threads: int, folder: Path,
              recv_into: bool = False) -> float:
    """Seconds to move ``n_frames`` copies of ``frame`` producer -> relay -> consumer (first sent to last
    received)."""
    contexts = [zmq.Context(io_threads=io_threads) for _ in range(3)]
    a, b = _endpoint(transport, folder, f"in{io_threads}"), _endpoint(transport, folder, f"out{io_threads}")
    relay_in, relay_out = contexts[1].socket(zmq.PULL), contexts[1].socket(zmq.PUSH)
    consumer, producer = contexts[2].socket(zmq.PULL), contexts[0].socket(zmq.PUSH)
    for sock in (relay_in, relay_out, consumer, producer):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM if sock.type == zmq.PUSH else zmq.RCVHWM, 2)
    relay_in.bind(a)
    relay_out.bind(b)
    producer.connect(a)
    consumer.connect(b)
    pool = np.empty(frame.nbytes, np.uint8)
    times: dict[str, float] = {}
    connected = threading.Event()

    def produce() -> None:
        producer.send(b"warm-up")  # every connection made before the clock starts
        connected.wait()
        times["start"] = time.perf_counter()
        for _ in range(n_frames):
            producer.send(frame, copy=False)

    def relay() -> None:
        for _ in range(n_frames + 1):
            if recv_into:
                n = relay_in.recv_into(pool)
                relay_out.send(memoryview(pool)[:n], copy=True if n < 1024 else False)
            else:
                relay_out.send(relay_in.recv(copy=False), copy=False)

    threads = [threading.Thread(target=produce), threading.Thread(target=relay)]
    for t in threads:
        t.start()
    consumer.recv()
    connected.set()
    for _ in range(n_frames):
        consumer.recv(copy=False)
    elapsed = time.perf_counter() - times["start"]
    for t in threads:
        t.join()
    for sock in (relay_in, relay_out, consumer, producer):
        sock.close()
    for ctx in contexts:
        ctx.term()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(6388, 9576), metavar=("NY", "NX"))
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--io-threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    frame = np.random.default_rng(0).integers(0, 65536, tuple(args.shape), dtype=np.uint16)
    gb = frame.nbytes / 1e9
    print(f"{args.shape[1]} x {args.shape[0]} uint16 frames ({frame.nbytes / 1e6:.0f} MB), {args.frames} a run, "
          f"{os.cpu_count()} CPUs; producer -> relay -> consumer, each with its own context")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rtnrelay-") as tmp:
        for transport in ("tcp", "ipc"):
            for n in args.io_threads:
                for recv_into in (False, True):
                    if recv_into and n != max(args.io_threads):
                        continue
                    s = relay_run(frame, args.frames, transport, n, Path(tmp), recv_into)
                    fps = args.frames / s
                    rows.append({"transport": transport, "io_threads": n, "relay_recv": "recv_into pooled"
                                 if recv_into else "zero copy", "frames_per_s": round(fps, 2),
                                 "gb_per_s_per_hop": round(fps * gb, 2)})
                    r = rows[-1]
                    print(f"  {transport}  I/O threads {n}  relay {r['relay_recv']:<16}  {fps:6.2f} frames/s  "
                          f"{r['gb_per_s_per_hop']:5.2f} GB/s a hop")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "zmq_relay", "shape": list(args.shape), "frames": args.frames,
                       "cpu_count": os.cpu_count(), "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
