"""Peak memory (RSS) of the live service and of ``rtnstream demo`` on full frames, NumPy backend.

    .venv/bin/python bench/memory_service.py                       # IMX455: 6388 x 9576, 5 % RTN pixels
    .venv/bin/python bench/memory_service.py --shape 2000 3000 --frames 20 --skip-demo

Service: writes the true cube of a simulated sensor (``rtnstream camera --write-cube``), starts
``rtnstream serve --backend numpy`` as its own process, uploads the cube over HTTP, creates a job (temporal
reference, lossless push output, read by a consumer here) and runs ``rtnstream camera`` (its own process)
streaming ``--frames`` full frames into the job's ingest. The service's RSS is sampled from
/proc/PID/status every 0.1 s, with its peak (``VmHWM``) read before it is stopped: the cube's upload and
read, the engine and the products, the job's queues and the temporal window all fall in it.

Demo: runs ``rtnstream demo --backend numpy`` (service, camera, sink and truth in one process, and its
embedded Redis) and takes its peak RSS (``ru_maxrss`` of the child, from ``os.wait4``) and the peak of the
summed RSS of all its processes (sampled every 0.1 s).

Prints the figures and writes PNGs of the RSS against time: the service's at ``--plot``, the demo's beside
it (``memory_demo.png`` for the default).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory_rss import LIMIT_MB, RssSampler, plot_rss, run_sampled, status_kb  # bench/ is on the path


def _rtnstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtnstream", *args]


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    import httpx
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"rtnstream serve exited with status {proc.returncode}")
        try:
            httpx.get(url + "/healthz", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"rtnstream serve did not answer at {url} within {timeout_s} s")


def measure_service(shape: tuple[int, int], frames: int, work: Path) -> tuple[float, RssSampler, dict]:
    """Peak RSS (MB) of ``rtnstream serve`` running one full-frame job, its samples and the phase marks."""
    from rtnstream.clients.control import ControlClient
    from rtnstream.clients.stream import FrameReceiver
    from rtnstream.service.server import free_port

    sensor = ["--shape", str(shape[0]), str(shape[1]), "--sensor-seed", "0"]
    cube_path = work / "cube.fits"
    t0 = time.perf_counter()
    subprocess.run(_rtnstream("camera", *sensor, "--write-cube", str(cube_path)), check=True,
                   stdout=subprocess.DEVNULL)
    print(f"cube {cube_path.stat().st_size / 1e6:.0f} MB written in {time.perf_counter() - t0:.0f} s")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen(_rtnstream("serve", "--port", str(port), "--data-dir", str(work / "service"),
                                        "--backend", "numpy", "--log-level", "warning"))
    sampler = RssSampler(serve.pid)
    sampler.start()
    marks: dict[str, float] = {}
    try:
        _wait_http(url, serve)
        marks["started"] = sampler.mark()
        with ControlClient(url, timeout_s=600.0) as api:
            cube = api.upload_cube(cube_path)
            marks["cube uploaded"] = sampler.mark()
            ingest, publish, push = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
            job_id = api.create_job("memcam", cube["id"], ingest, publish, push=push, reference="temporal",
                                    window=10, overload="block", backend="numpy")
            api.wait_until(job_id, lambda s: s["state"] == "running", timeout_s=600.0, interval_s=0.5)
            marks["job running"] = sampler.mark()
            received = 0
            with FrameReceiver(push, "pull") as receiver:
                camera = subprocess.Popen(_rtnstream("camera", "--ingest", ingest, *sensor, "--frames",
                                                     str(frames), "--fps", "0", "--scene", "stars",
                                                     "--camera", "memcam"), stdout=subprocess.DEVNULL)
                while True:
                    msg = receiver.recv(1.0)
                    if msg is None:
                        if camera.poll() is not None and camera.returncode != 0:
                            raise RuntimeError(f"rtnstream camera exited with status {camera.returncode}")
                        continue
                    if msg.header.kind == "frame":
                        received += 1
                    elif msg.header.kind == "end":
                        break
                camera.wait()
            marks[f"{received} frames out"] = sampler.mark()
            api.stop_job(job_id)
        peak_kb = status_kb(serve.pid, "VmHWM") or 0
    finally:
        sampler.finish()
        serve.terminate()
        serve.wait(30)
    if received != frames:
        raise RuntimeError(f"{received} of {frames} frames came out of the job")
    return peak_kb / 1024, sampler, marks


class TreeRssSampler(RssSampler):
    """Samples the summed ``VmRSS`` of process ``pid`` and all its descendants (the demo's embedded Redis)."""

    def run(self) -> None:
        while not self.stop.is_set():
            kb = [status_kb(p, "VmRSS") for p in _tree(self.pid)]
            if kb and kb[0] is not None:
                self.samples.append((time.perf_counter() - self.t0, sum(k or 0 for k in kb) / 1024))
            self.stop.wait(self.interval_s)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def measure_demo(shape: tuple[int, int], frames: int) -> tuple[float, float, RssSampler]:
    """Peak RSS (MiB) of ``rtnstream demo --backend numpy`` on ``frames`` frames of ``shape``: that of its
    process (``ru_maxrss``, from ``os.wait4``; exact), that of its processes together (sampled every 0.1 s),
    and the samples."""
    cmd = _rtnstream("demo", "--backend", "numpy", "--shape", str(shape[0]), str(shape[1]), "--frames", str(frames),
                     "--fps", "1000")
    peak_mb, sampler = run_sampled("rtnstream demo", cmd, TreeRssSampler)
    return peak_mb, max((mb for _, mb in sampler.samples), default=0.0), sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(6388, 9576), metavar=("NY", "NX"))
    ap.add_argument("--frames", type=int, default=40, help="frames the camera streams into the service")
    ap.add_argument("--demo-frames", type=int, default=20, help="frames of the demo run")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-service", action="store_true")
    ap.add_argument("--plot", type=Path, default=Path("bench/results/memory_service.png"))
    ap.add_argument("--dir", default=None, help="folder for the cube and the service's data (default: a "
                                                "temporary one, removed)")
    args = ap.parse_args()
    shape = (args.shape[0], args.shape[1])
    if not args.skip_service:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            peak, sampler, marks = measure_service(shape, args.frames, Path(tmp))
        print(f"service, {shape[0]} x {shape[1]}, {args.frames} frames, temporal W=10, NumPy: peak RSS {peak:.0f} "
              f"MiB ({'within' if peak <= LIMIT_MB else 'ABOVE'} the 3 GiB bound); phases (s): "
              + ", ".join(f"{k} {v:.0f}" for k, v in marks.items()))
        plot_rss({"rtnstream serve": sampler}, marks, LIMIT_MB, args.plot,
                 f"rtnstream serve, {shape[0]} x {shape[1]} frames, NumPy backend: peak {peak:.0f} MiB")
        print(f"plot: {args.plot}")
    if not args.skip_demo:
        demo, tree, sampler = measure_demo(shape, args.demo_frames)
        worst = max(demo, tree)
        print(f"demo, {shape[0]} x {shape[1]}, {args.demo_frames} frames, NumPy: peak RSS {demo:.0f} MiB (its "
              f"process), {tree:.0f} MiB (its processes together, sampled every 0.1 s) "
              f"({'within' if worst <= LIMIT_MB else 'ABOVE'} the 3 GiB bound)")
        plot = args.plot.with_name(args.plot.stem.replace("service", "demo") + args.plot.suffix)
        plot_rss({"rtnstream demo (all its processes)": sampler}, {}, LIMIT_MB, plot,
                 f"rtnstream demo, {shape[0]} x {shape[1]} frames, NumPy backend: peak {worst:.0f} MiB")
        print(f"plot: {plot}")

if __name__ == "__main__":
    main()
