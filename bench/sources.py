"""Camera paths: latency each source adds per frame, and frames/s, at the simulators' frame sizes.

Runs a real service (NumPy backend, spatial reference), the INDI server with its CCD simulator (1280 x 1024,
16 bit; Debian's indi-bin) and the alpaca-simulators camera (1024 x 1024), and the real ``rtnstream source``
commands into a job whose lossless output a consumer reads. The service measures each frame from its header
``timestamp`` (the exposure's start, from the device) to its publication; less the exposure time, that is what
the path adds after the shutter closes: the device's readout, the transfer (INDI: a base64 FITS BLOB;
Alpaca: ImageBytes over HTTP), the source, ZeroMQ and the correction. ``arrival`` is the service's own part.

    python bench/sources.py [--frames 20] [--exposure 0.1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import SensorModel
from rtnstream.service.protocol import unix_time
from rtnstream.service.server import BackgroundServer, free_port
from rtnstream.service.settings import ServiceSettings


def _listen(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=log.parent)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"{cmd[0]} did not listen on {port}: {log.read_text()}") from None
            time.sleep(0.1)


def _job(api: ControlClient, cube: Path) -> dict:
    ep = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    job = api.create_job("cam", api.upload_cube(cube)["id"], ep[0], ep[1], push=ep[2], reference="spatial")
    return api.get_job(job)


def _consume(endpoint: str, stop: threading.Event, got: list) -> threading.Thread:
    def run() -> None:
        with FrameReceiver(endpoint, "pull") as rx:
            while not stop.is_set():
                msg = rx.recv(0.05)
                if msg is not None and msg.header.kind == "frame":
                    got.append(round(1000 * (time.time() - unix_time(msg.header.timestamp)), 1))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _figures(api: ControlClient, job: dict, n: int, wall_s: float, exposure_s: float, got: list) -> dict:
    try:  # the lossless consumer acknowledges the last frame at its next read
        status = api.wait_until(job["id"], lambda s: s["counters"]["frames_out"] >= n, 10)
    except TimeoutError:
        status = api.get_job(job["id"])
    ts, arr = status["latency_from_timestamp_ms"], status["latency_ms"]
    return {"frames": status["counters"]["frames_out"], "expected": n, "frames_per_s": n / wall_s,
            "added_after_exposure_ms_p50": ts["p50"] - 1000 * exposure_s, "added_after_exposure_ms_p99":
            ts["p99"] - 1000 * exposure_s, "service_arrival_to_output_ms_p50": arr["p50"],
            "rejected": status["counters"]["rejected"], "consumer_ms_from_timestamp_each_frame": got}


def bench_indi(api: ControlClient, url: str, work: Path, n: int, exposure_s: float) -> dict:
    port = free_port()
    server = _listen(["indiserver", "-p", str(port), "indi_simulator_ccd"], port, work / "indiserver.log")
    cube = write_cube(SensorModel.random((1024, 1280), rtn_fraction=0.05, seed=1).true_cube(), work / "indi.fits")
    job, got, stop = _job(api, cube), [], threading.Event()
    consumer = _consume(job["config"]["push"], stop, got)
    source = subprocess.Popen([sys.executable, "-m", "rtnstream", "source", "indi", "--server", f"127.0.0.1:{port}",
                               "--device", "CCD Simulator", "--camera", "cam", "--ingest", job["config"]["ingest"],
                               "--service", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def setprop(a: str) -> None:
            subprocess.run(["indi_setprop", "-p", str(port), f"CCD Simulator.{a}"], check=True)
        setprop("CONNECTION.CONNECT=On")
        time.sleep(2)  # the driver defines its image BLOB after connecting; the source enables it
        t0 = time.monotonic()
        for i in range(n):  # one exposure at a time, as a capture sequence does
            setprop(f"CCD_EXPOSURE.CCD_EXPOSURE_VALUE={exposure_s}")
            deadline = time.monotonic() + 60
            while len(got) <= i and time.monotonic() < deadline:
                time.sleep(0.002)
        wall = time.monotonic() - t0
        return _figures(api, job, n, wall, exposure_s, got)
    finally:
        source.terminate()
        source.wait(30)
        stop.set()
        consumer.join(5)
        api.stop_job(job["id"])
        server.terminate()
        server.wait(10)


def bench_alpaca(api: ControlClient, url: str, work: Path, n: int, exposure_s: float) -> dict:
    port = free_port()
    exe = Path(sys.executable).with_name("alpaca-simulators")
    server = _listen([str(exe), "--host", "127.0.0.1", "--port", str(port)], port, work / "alpaca.log")
    cube = write_cube(SensorModel.random((1024, 1024), rtn_fraction=0.05, seed=1).true_cube(), work / "alp.fits")
    job, got, stop = _job(api, cube), [], threading.Event()
    consumer = _consume(job["config"]["push"], stop, got)
    try:
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "rtnstream", "source", "alpaca", "--url", f"http://127.0.0.1:{port}",
                        "--exposure", str(exposure_s), "--count", str(n), "--dark", "--camera", "cam",
                        "--ingest", job["config"]["ingest"], "--service", url], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return _figures(api, job, n, time.monotonic() - t0, exposure_s, got)  # includes the command's start-up
    finally:
        stop.set()
        consumer.join(5)
        api.stop_job(job["id"])
        server.terminate()
        server.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--exposure", type=float, default=0.1, help="s (Alpaca: dark frames)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict = {"machine": platform.platform(), "frames": args.frames, "exposure_s": args.exposure}
    with tempfile.TemporaryDirectory() as tmp, \
            BackgroundServer(ServiceSettings(host="127.0.0.1", port=0, data_dir=Path(tmp) / "svc",
                                             backend="numpy")) as srv, ControlClient(srv.url) as api:
        if shutil.which("indiserver"):
            results["indi"] = bench_indi(api, srv.url, Path(tmp), args.frames, args.exposure)
        results["alpaca"] = bench_alpaca(api, srv.url, Path(tmp), args.frames, args.exposure)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
