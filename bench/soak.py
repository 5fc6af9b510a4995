"""Soak run: the live service (HTTP control plane, embedded Redis, one job) fed for a fixed time on loopback.

A producer thread sends series after series of simulated frames (a few distinct ones, cycled) to the job's
ingest as fast as the job takes them (overload policy ``block``: lossless) or at ``--fps``; a consumer
thread takes every frame from the job's lossless push output and records which (series, seq) arrived.
With ``--hostile RATE`` a second producer mixes in RATE malformed messages a second (every kind the
protocol rejects: bad JSON, NaN, 400-digit numbers, NumPy 2 dtypes, ``meta`` 900 levels deep or 20,000
values wide, 300 KB headers, wrong shapes, byte counts and cameras, frames of no open series), each of
which must be rejected and counted. With ``--consumer-restart S`` the consumer drops its connection
without a word every S seconds (as a crash would) and a new one takes over.

Printed: frames in / out, lost frames (sent but never received: must be 0), the job's own counters and
whether they account for every message (``frames_in = frames_out + rejected + dropped + abandoned +
in_flight`` and the hostile messages all rejected), and the process's resident memory (RSS, from
/proc/self/status) sampled every second: after warm-up, mid-run, at the end, the slope of a straight-line
fit after warm-up (MB/min; a leak shows as a steady rise), and a PNG of the curve with ``--plot``. The
service, producers and consumer run in this one process, so the RSS is theirs together.

    python bench/soak.py [--duration 120] [--shape 2048 2048] [--fps 0] [--series-frames 200]
                         [--reference temporal] [--window 10] [--backend auto] [--hostile 0]
                         [--consumer-restart 0] [--json FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rtnstream.clients.control import ControlClient
from rtnstream.clients.stream import FrameReceiver, FrameSender
from rtnstream.kernels.cube import write_cube
from rtnstream.kernels.simulate import SensorModel
from rtnstream.service.protocol import PROTO
from rtnstream.service.server import BackgroundServer, free_port
from rtnstream.service.settings import ServiceSettings

__all__ = ["SoakResult", "hostile_messages", "rss_mb", "run_soak"]


def rss_mb() -> float:
    """Resident memory of this process, MB (``VmRSS`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


@dataclass
class SoakResult:
    """What a soak run measured.

    Attributes
    ----------
    frames_sent, frames_received : int
    lost : int
        Frames sent and never received on the push output.
    series_sent, series_received : int
        Series sent, and series whose ``end`` came out.
    hostile_sent : dict
        Malformed messages sent by the hostile producer, by the reason they must be rejected for.
    consumer_restarts : int
        Times the consumer dropped its connection and a new one took over.
    counters : dict
        The job's counters at the end (``GET /v1/jobs/{id}``).
    rss_mb : list of (float, float)
        (seconds since the start, RSS in MB) samples.
    warmup_s : float
        Samples before this time are warm-up (threshold table, buffers, first series).
    duration_s : float
        Time the producer sent frames, s.
    """

    frames_sent: int = 0
    frames_received: int = 0
    lost: int = 0
    series_sent: int = 0
    series_received: int = 0
    hostile_sent: dict = field(default_factory=dict)
    consumer_restarts: int = 0
    counters: dict = field(default_factory=dict)
    rss_mb: list = field(default_factory=list)
    warmup_s: float = 0.0
    duration_s: float = 0.0

    def rss_after_warmup(self) -> list[tuple[float, float]]:
        """The RSS samples taken after warm-up."""
        return [s for s in self.rss_mb if s[0] >= self.warmup_s]

    def unaccounted(self) -> int:
        """Messages the job's counters do not account for (must be 0)."""
        c = self.counters
        return c["frames_in"] - (c["frames_out"] + sum(c["rejected"].values()) + c["dropped"] + c["abandoned"]
                                 + c.get("in_flight", 0))

    def rss_slope_mb_per_min(self) -> float:
        """Slope of a straight line through the samples after warm-up, MB/min."""
        t, mb = np.array(self.rss_after_warmup()).T
        return float(np.polyfit(t, mb, 1)[0] * 60)


def run_soak(shape: tuple[int, int], duration_s: float, fps: float | None = None, series_frames: int = 200,
             reference: str = "temporal", window: int = 10, backend: str = "auto", distinct: int = 4,
             warmup_fraction: float = 0.2, progress: bool = False, hostile_per_s: float = 0.0,
             consumer_restart_s: float = 0.0) -> SoakResult:
    """Run the service for ``duration_s`` seconds of sending; see the module docstring.

    Parameters
    ----------
    shape : (ny, nx)
        Frame shape, pixels.
    duration_s : float > 0
        How long the producer sends, s.
    fps : float or None
        Producer rate, frames/s (None: as fast as the job takes them).
    series_frames : int >= 1
        Frames per series.
    reference, window, backend
        The job's settings.
    distinct : int >= 1
        Distinct simulated frames, cycled.
    warmup_fraction : float in [0, 1)
        Share of ``duration_s`` counted as warm-up in the memory figures.
    progress : bool
        Show a progress bar of frames received.
    hostile_per_s : float >= 0
        Malformed messages a second from a second producer (0: none).
    consumer_restart_s : float >= 0
        Drop the consumer's connection and start a new one every this many seconds (0: never).

    Raises
    ------
    ValueError
        ``duration_s`` <= 0, ``series_frames`` < 1, or ``warmup_fraction`` outside [0, 1).
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if series_frames < 1:
        raise ValueError(f"series_frames must be >= 1, got {series_frames}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    result = SoakResult(warmup_s=warmup_fraction * duration_s)
    sensor = SensorModel.random(shape, rtn_fraction=0.05, seed=0)
    frames = [f.data for f in sensor.frames(distinct, seed=1)]
    with tempfile.TemporaryDirectory(prefix="rtnstream-soak-") as tmp:
        cube_path = write_cube(sensor.true_cube(), Path(tmp) / "cube.fits")
        del sensor
        settings = ServiceSettings(host="127.0.0.1", port=0, data_dir=Path(tmp) / "data", backend=backend,
                                   state_flush_s=1.0)
        with BackgroundServer(settings) as server, ControlClient(server.url) as api:
            cube_id = api.upload_cube(cube_path)["id"]
            ep = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("ingest", "publish", "push")}
            job = api.create_job("soak", cube_id, ep["ingest"], ep["publish"], push=ep["push"],
                                 reference=reference, window=window, overload="block", queue_frames=4)
            _soak(api, job, ep, frames, duration_s, fps, series_frames, result, progress, hostile_per_s,
                  consumer_restart_s)
            result.counters = api.stop_job(job)["counters"]
    return result


def hostile_messages(shape: tuple[int, int]) -> list[tuple[str, list[bytes]]]:
    """Malformed messages for a job of frames ``shape`` (camera ``soak``), each with the reason it must be
    rejected for; none of them can open or close a series."""
    ny, nx = shape
    good = {"proto": PROTO, "kind": "frame", "camera": "soak", "series": "evil", "seq": 0, "shape": [ny, nx],
            "dtype": "<u2"}
    pixels = b"\x00" * (ny * nx * 2)

    def frame(text: str | None = None, data: bytes = pixels, **changes: object) -> list[bytes]:
        return [(text or json.dumps({**good, **changes})).encode(), data]

    base = json.dumps(good)[:-1]
    return [
        ("json", frame("{not json")),
        ("json", frame(base + ', "exptime": NaN}')),
        ("proto", frame(proto="rtnstream/9")),
        ("parts", frame()[:1]),
        ("dtype", frame(dtype="T")),
        ("header", frame(exptime=10**400)),
        ("header", frame(seq=10**400)),
        ("header", frame(base + ', "meta": ' + '{"k":' * 899 + "1" + "}" * 899 + "}")),
        ("header", frame(meta={str(i): 0 for i in range(20_000)})),
        ("size", frame(meta={"PAD": "x" * 300_000})),
        ("shape", frame(shape=[max(1, ny // 2), nx], data=pixels[:max(1, ny // 2) * nx * 2])),
        ("bytes", frame(data=pixels[:-2])),
        ("camera", frame(camera="intruder")),
        ("no_series", frame()),  # series "evil" is never open
    ]


def _soak(api: ControlClient, job: str, ep: dict[str, str], frames: list[np.ndarray], duration_s: float,
          fps: float | None, series_frames: int, result: SoakResult, progress: bool, hostile_per_s: float,
          consumer_restart_s: float) -> None:
    sent: set[tuple[str, int]] = set()
    received: set[tuple[str, int]] = set()
    ended: set[str] = set()
    done_sending = threading.Event()
    t0 = time.monotonic()

    def consume() -> None:
        rx = FrameReceiver(ep["push"], "pull", rcvhwm=4)
        restarted = time.monotonic()
        with tqdm(unit="frame", desc="soak", disable=not progress) as bar:
            while not (done_sending.is_set() and result.series_received == result.series_sent):
                if consumer_restart_s and time.monotonic() - restarted > consumer_restart_s:
                    rx._socket.close(linger=0)  # as a crash would: no last acknowledgement
                    rx = FrameReceiver(ep["push"], "pull", rcvhwm=4)
                    restarted = time.monotonic()
                    result.consumer_restarts += 1
                msg = rx.recv(0.5)
                if msg is None:
                    continue
                if msg.header.kind == "frame":
                    received.add((msg.header.series, msg.header.seq))
                    bar.update(1)
                elif msg.header.kind == "end":  # a set: after a consumer restart an end may come twice
                    ended.add(msg.header.series)
                    result.series_received = len(ended)
        rx.close()

    def attack() -> None:
        messages = hostile_messages(frames[0].shape)
        counts: Counter[str] = Counter()
        with FrameSender(ep["ingest"], "intruder", sndhwm=8) as evil:
            k = 0
            while not done_sending.is_set():
                reason, parts = messages[k % len(messages)]
                evil.send_parts(parts)
                counts[reason] += 1
                k += 1
                time.sleep(1.0 / hostile_per_s)
        result.hostile_sent = dict(counts)

    def sample() -> None:
        while not done_sending.is_set() or consumer.is_alive():
            result.rss_mb.append((time.monotonic() - t0, rss_mb()))
            time.sleep(1.0)

    consumer = threading.Thread(target=consume, name="soak-consumer", daemon=True)
    sampler = threading.Thread(target=sample, name="soak-rss", daemon=True)
    attacker = threading.Thread(target=attack, name="soak-hostile", daemon=True)
    consumer.start()
    sampler.start()
    if hostile_per_s > 0:
        attacker.start()
    with FrameSender(ep["ingest"], "soak", sndhwm=2) as tx:
        k = 0
        while time.monotonic() - t0 < duration_s:
            series = tx.start_series(f"soak-{result.series_sent:05d}")
            for seq in range(series_frames):
                if fps and (delay := t0 + k / fps - time.monotonic()) > 0:
                    time.sleep(delay)
                tx.send_frame(frames[k % len(frames)], exptime=0.0)
                sent.add((series, seq))
                k += 1
                if time.monotonic() - t0 >= duration_s:
                    break
            tx.end_series()
            result.series_sent += 1
        result.duration_s = time.monotonic() - t0
        done_sending.set()
        consumer.join(120.0)
    sampler.join(5.0)
    if attacker.ident is not None:
        attacker.join(10.0)
    if consumer.is_alive():
        raise RuntimeError(f"job {job}: {result.series_sent - result.series_received} series never ended on "
                           f"the push output within 120 s; counters {api.get_job(job)['counters']}")
    result.frames_sent, result.frames_received = len(sent), len(received)
    result.lost = len(sent - received)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of sending")
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("NY", "NX"))
    ap.add_argument("--fps", type=float, default=0.0, help="producer rate, frames/s (0: as fast as possible)")
    ap.add_argument("--series-frames", type=int, default=200, help="frames per series")
    ap.add_argument("--reference", choices=("temporal", "causal", "spatial"), default="temporal")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")
    ap.add_argument("--hostile", type=float, default=0.0, help="malformed messages a second (0: none)")
    ap.add_argument("--consumer-restart", type=float, default=0.0,
                    help="drop the consumer's connection every this many seconds (0: never)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--plot", help="write the RSS curve to this PNG file")
    args = ap.parse_args()

    r = run_soak((args.shape[0], args.shape[1]), args.duration, args.fps or None, args.series_frames,
                 args.reference, args.window, args.backend, progress=True, hostile_per_s=args.hostile,
                 consumer_restart_s=args.consumer_restart)
    c = r.counters
    after = r.rss_after_warmup()
    mid = after[len(after) // 2]
    print(f"soak: {args.shape[1]} x {args.shape[0]}, {args.reference} W={args.window}, {r.duration_s:.0f} s "
          f"of sending, {r.series_sent} series")
    print(f"frames sent {r.frames_sent}, received {r.frames_received}, lost {r.lost}; "
          f"{r.frames_received / r.duration_s:.2f} frames/s")
    print(f"job counters: in {c['frames_in']}, out {c['frames_out']}, rejected {dict(c['rejected'])}, "
          f"dropped {c['dropped']}, abandoned {c['abandoned']}, in flight {c.get('in_flight', 0)}, "
          f"series {c['series_started']} started / {c['series_finished']} finished; unaccounted {r.unaccounted()}")
    if r.hostile_sent:
        print(f"hostile messages sent {sum(r.hostile_sent.values())} {r.hostile_sent}; all rejected as expected: "
              f"{r.hostile_sent == dict(c['rejected'])}")
    print(f"consumer restarts {r.consumer_restarts}")
    print(f"RSS MB: start {r.rss_mb[0][1]:.0f} (t=0), after warm-up {after[0][1]:.0f} (t={after[0][0]:.0f} s), "
          f"mid {mid[1]:.0f} (t={mid[0]:.0f} s), end {after[-1][1]:.0f} (t={after[-1][0]:.0f} s), "
          f"max {max(s[1] for s in r.rss_mb):.0f}; slope after warm-up {r.rss_slope_mb_per_min():+.2f} MB/min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "soak", "shape": list(args.shape), **asdict(r),
                       "rss_slope_mb_per_min": r.rss_slope_mb_per_min()}, f, indent=2)
    if args.plot:
        _plot_rss(r, args.plot, f"soak {args.shape[1]} x {args.shape[0]}, {args.reference} W={args.window}")
    if r.lost or r.unaccounted() or (r.hostile_sent and r.hostile_sent != dict(c["rejected"])):
        raise SystemExit(f"bench/soak.py: {r.lost} frames lost, {r.unaccounted()} unaccounted")


def _plot_rss(r: SoakResult, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, mb = np.array(r.rss_mb).T
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, mb, lw=1)
    ax.axvline(r.warmup_s, color="grey", ls=":", label="end of warm-up")
    ax.set(xlabel="time, s", ylabel="RSS, MB", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
