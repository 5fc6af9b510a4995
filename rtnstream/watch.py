"""Live correction of a folder (``rtnstream watch``): FITS files corrected as the camera software writes them.

The folder is polled (recursively, a name pattern): a file is taken once it is complete, i.e. its size and
modification time have not changed for ``settle_s`` seconds and the FITS is complete by the check
``correct`` uses (:func:`rtnstream.series.scan`). Taken files are ordered and split into series by
:func:`rtnstream.series.plan` (a file starts a new series where ``plan`` of the open series plus that file
would start one), checked by the guards, pushed into the series' :class:`~rtnstream.products.SeriesCorrector`
and each frame is written as soon as its temporal window allows, with ``correct``'s products and writer
(:func:`rtnstream.offline.write_output`). A series ends at a settings change or gap, after ``idle_s``
seconds without a new file, or when the watch stops (``stop`` set: SIGTERM / SIGINT), which flushes it.

A state file in the output folder (:data:`STATE_NAME`, JSON, replaced atomically after every frame)
records the inputs whose outputs are written, the files passed over, the closed series and the open one (its
files in push order). A restarted watch pushes the open series' files again as the window's reference,
discarding the outputs already written, so the frames still pending come out exactly as without the stop.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtnstream import __version__
from rtnstream.fitsio import read_image
from rtnstream.guards import DEFAULT_TEMPERATURE_TOLERANCE_C, check_frame_header, cube_part, frame_origin
from rtnstream.kernels.cube import RTNCube
from rtnstream.kernels.engine import BackendName, EngineSettings
from rtnstream.kernels.exceptions import FrameError
from rtnstream.kernels.numpy_backend import FrameCounts
from rtnstream.offline import CALIB_DIR, write_offset_map, write_output
from rtnstream.products import FrameProducts, Mode, SeriesCorrector
from rtnstream.series import FITS_SUFFIXES, FrameFile, Series, plan, plan_lines, scan

__all__ = ["STATE_NAME", "STATE_VERSION", "WatchConfig", "watch_folder"]

log = logging.getLogger(__name__)

STATE_NAME = "watch_state.json"
STATE_VERSION = 1


@dataclass
class WatchConfig:
    """What ``rtnstream watch`` does besides the engine settings (the options of ``correct`` it shares).

    Attributes
    ----------
    backend : {'auto', 'numpy', 'cupy'}
    mode : {'correct', 'mask'}
    dq, uncertainty : bool
        Write the DQ / UNCERT extensions.
    force : bool
        Correct frames the guards refuse (recorded in RTNFORCE).
    order_key : str
        Header key of each frame's time.
    max_gap : float
        A time step longer than this many cadences starts a new series.
    origin_keys : (str, str)
    temperature_tolerance_c : float, degrees C
    cube_path : str or None
        The cube's file (RTNCUBEF).
    pattern : str
        Name pattern (glob) of the files taken, in the folder and its sub-folders; only names ending like
        FITS (:data:`rtnstream.series.FITS_SUFFIXES`) are taken.
    settle_s : float, s
        A file is complete once unchanged (size, modification time) this long and complete as FITS.
    poll_s : float, s
        Interval between looks at the folder.
    idle_s : float or None, s
        End the open series after this long without a new file (None: never).
    """

    backend: BackendName = "auto"
    mode: Mode = "correct"
    dq: bool = True
    uncertainty: bool = True
    force: bool = False
    order_key: str = "DATE-OBS"
    max_gap: float = 5.0
    origin_keys: tuple[str, str] = ("XORGSUBF", "YORGSUBF")
    temperature_tolerance_c: float = DEFAULT_TEMPERATURE_TOLERANCE_C
    cube_path: str | None = None
    pattern: str = "*"
    settle_s: float = 1.0
    poll_s: float = 0.5
    idle_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("settle_s", "poll_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (s), got {getattr(self, name)!r}")
        if self.idle_s is not None and not self.idle_s > 0:
            raise ValueError(f"idle_s must be > 0 (s) or None, got {self.idle_s!r}")


@dataclass
class _Open:
    """The open series: its frames in push order, what each is corrected with, the corrector."""

    series: Series
    corrector: SeriesCorrector
    origin: tuple[int, int] | None
    forced: dict[str, tuple[str, ...]] = field(default_factory=dict)
    counts: FrameCounts = field(default_factory=FrameCounts)


class _Folder:
    """The candidate files of the watched folder and when each last changed (nothing is opened here)."""

    def __init__(self, indir: Path, outdir: Path, pattern: str) -> None:
        self._indir = indir
        self._outdir = outdir.resolve()
        self._pattern = pattern
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}  # path -> ((size, mtime_ns), since)
        self._tried: dict[Path, tuple[int, int]] = {}  # not complete as FITS at this (size, mtime_ns)

    def settled(self, handled: set[str], settle_s: float) -> tuple[list[Path], bool]:
        """Files unchanged for ``settle_s`` and not yet handled (relative names in ``handled``), and whether
        any file appeared or changed since the last call."""
        now = time.monotonic()
        changed = False
        present = set()
        for path in self._indir.rglob(self._pattern):
            rel = path.relative_to(self._indir)
            if (any(part.startswith(".") for part in rel.parts) or not path.name.lower().endswith(FITS_SUFFIXES)
                    or rel.as_posix() in handled or self._outdir in path.resolve().parents):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # renamed away meanwhile
                continue
            if not path.is_file():
                continue
            present.add(path)
            key = (st.st_size, st.st_mtime_ns)
            if path not in self._seen or self._seen[path][0] != key:
                self._seen[path] = (key, now)
                changed = True
        for path in set(self._seen) - present:
            del self._seen[path]
            self._tried.pop(path, None)
        ready = [p for p, (key, since) in self._seen.items()
                 if now - since >= settle_s and self._tried.get(p) != key]
        return ready, changed

    def not_complete(self, path: Path) -> None:
        """``path`` is not complete FITS yet: look at it again once it changes."""
        if path in self._seen:
            self._tried[path] = self._seen[path][0]

    def incomplete(self) -> list[Path]:
        """The files found not complete as FITS at their current size."""
        return sorted(p for p, key in self._tried.items() if self._seen.get(p, (None,))[0] == key)

    def forget(self, path: Path) -> None:
        """``path`` is handled: no longer a candidate."""
        self._seen.pop(path, None)
        self._tried.pop(path, None)


class _Watch:
    """One watch of a folder: the state file, the open series, the frames written (:func:`watch_folder`)."""

    def __init__(self, cube: RTNCube, indir: Path, outdir: Path, settings: EngineSettings, cfg: WatchConfig) -> None:
        self.cube = cube
        self.indir = indir
        self.outdir = outdir
        self.settings = settings
        self.cfg = cfg
        self.state_path = outdir / STATE_NAME
        self.folder = _Folder(indir, outdir, cfg.pattern)
        self.open: _Open | None = None
        self.written = 0
        self.closed = 0
        self.state = self._load_state()

    # --- state -------------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"indir": str(self.indir.resolve()), "cube_id": self.cube.cube_id, "settings": asdict(self.settings),
                "mode": self.cfg.mode, "dq": self.cfg.dq, "uncertainty": self.cfg.uncertainty}

    def _load_state(self) -> dict[str, Any]:
        fresh = {"version": STATE_VERSION, **self._identity(), "done": {}, "passed": {}, "series": [],
                 "open": None, "next_series": 1}
        if not self.state_path.exists():
            return fresh
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise FrameError(f"{self.state_path}: not a readable watch state ({exc}); move it away to start "
                             "afresh") from exc
        if state.get("version") != STATE_VERSION:
            raise FrameError(f"{self.state_path}: state version {state.get('version')!r}, this rtnstream "
                             f"writes {STATE_VERSION}")
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise FrameError(f"{self.state_path}: written by a watch with another {key} ({state.get(key)!r}, "
                                 f"this one has {value!r}): restart with the same options, or use another -o")
        return state

    def _save(self) -> None:
        tmp = self.state_path.with_name(f".{STATE_NAME}.{os.getpid()}.part")
        with open(tmp, "w") as fh:
            json.dump(self.state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.indir).as_posix()

    def _handled(self) -> set[str]:
        files = self.state["open"]["files"] if self.state["open"] else []
        return set(self.state["done"]) | set(self.state["passed"]) | set(files)

    def _pass(self, path: Path, reason: str) -> None:
        self.state["passed"][self._rel(path)] = reason
        self.folder.forget(path)
        self._save()
        log.warning("passed over %s", reason)

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> dict[str, Any]:
        self.outdir.mkdir(parents=True, exist_ok=True)
        self._save()
        log.info("watching %s (pattern %s, settle %.3g s) -> %s; state %s", self.indir, self.cfg.pattern,
                 self.cfg.settle_s, self.outdir, self.state_path)
        self._resume()
        last_activity = time.monotonic()
        while not stop.is_set():
            ready, changed = self.folder.settled(self._handled(), self.cfg.settle_s)
            files = []
            for path in ready:
                try:
                    files.extend(scan([path], order_key=self.cfg.order_key)[0])
                except FrameError as exc:
                    log.debug("not complete yet: %s", exc)
                    self.folder.not_complete(path)
            for f in (f for s in plan(files, self.cfg.max_gap, self.cfg.order_key) for f in s.files):
                self._take(f)
                self.folder.forget(f.path)
            if changed or files:
                last_activity = time.monotonic()
            elif (self.open is not None and self.cfg.idle_s is not None
                  and time.monotonic() - last_activity >= self.cfg.idle_s):
                self._close(f"{self.cfg.idle_s:g} s without a new file")
            stop.wait(self.cfg.poll_s)
        if self.open is not None:
            self._close("the watch stopped")
        incomplete = [self._rel(p) for p in self.folder.incomplete()]
        for name in incomplete:
            log.warning("%s: not complete FITS when the watch stopped: not taken (it will be, once complete)", name)
        log.info("stopped: %d frames written, %d series closed in this run", self.written, self.closed)
        return {"frames": self.written, "series_closed": self.closed, "passed": len(self.state["passed"]),
                "incomplete": incomplete, "state": str(self.state_path), "software_version": __version__}

    def _resume(self) -> None:
        """Rebuild the open series of the state file: push its frames again, write only the missing outputs."""
        rec = self.state["open"]
        if rec is None:
            return
        self.state["open"] = None
        for rel in rec["files"]:  # written, then stopped before the state said so: kept, not written again
            if rel not in self.state["done"] and (self.outdir / rel).exists():
                self.state["done"][rel] = rec["number"]
        kept = 0
        for rel in rec["files"]:
            path = self.indir / rel
            try:
                (f,) = scan([path], order_key=self.cfg.order_key)[0]
                forced = self._guards(f)
            except FrameError as exc:  # removed or changed meanwhile
                log.warning("series %d cannot push %s again (%s): rebuilt without it", rec["number"], rel, exc)
                continue
            if self.open is None:
                self._open(f, rec["reason"], rec["number"])
            self._push(f, forced)
            kept += rel in self.state["done"]
        if self.open is not None:
            log.info("resumed series %d: %d frames pushed again (%d outputs already written, kept)",
                     rec["number"], len(self.open.series.files), kept)

    def _take(self, f: FrameFile) -> None:
        """A new complete file: check it, find its series, push it."""
        name = self._rel(f.path)
        if f.is_stack:
            self._pass(f.path, f"{name}: a 3-D stack (correct it with rtnstream correct)")
            return
        try:
            forced = self._guards(f)
        except FrameError as exc:
            self._pass(f.path, str(exc))
            return
        reason = "first" if not self.state["series"] else "after the previous series ended"
        if self.open is not None:
            plan_ = plan([*self.open.series.files, f], self.cfg.max_gap, self.cfg.order_key)
            if len(plan_) > 1 and plan_[-1].files[0] is f:
                self._close(f"{plan_[-1].reason} at {name}")
                reason = plan_[-1].reason
            elif plan_[-1].files[-1] is not f:
                log.warning("%s is older than frames already corrected: taken in arrival order", name)
        if self.open is None:
            self._open(f, reason, self.state["next_series"])
        self._push(f, forced)

    def _guards(self, f: FrameFile) -> tuple[str, ...]:
        """The guards of ``correct`` (raise :class:`FrameError`); the ones overridden with ``force``."""
        name = self._rel(f.path)
        frame_origin(f.header, f.shape, self.cube.shape, name, self.cfg.origin_keys)
        return check_frame_header(f.header, self.cube, name, self.cfg.force, self.cfg.temperature_tolerance_c)

    def _open(self, f: FrameFile, reason: str, number: int) -> None:
        origin = frame_origin(f.header, f.shape, self.cube.shape, str(f.path), self.cfg.origin_keys)
        corrector = SeriesCorrector(cube_part(self.cube, origin, f.shape), self.settings, self.cfg.backend,
                                    self.cfg.mode, self.cfg.dq, self.cfg.uncertainty)
        self.open = _Open(Series(number, [], reason), corrector, origin)
        self.state["next_series"] = max(self.state["next_series"], number + 1)
        self.state["open"] = {"number": number, "reason": reason, "files": []}

    def _push(self, f: FrameFile, forced: tuple[str, ...]) -> None:
        op = self.open
        name = self._rel(f.path)
        try:
            outs = op.corrector.push(read_image(f.path, f.hdu_index), tag=f)
        except FrameError as exc:  # data that do not decode, another dtype than the series'
            self._pass(f.path, str(exc))
            if not op.series.files:  # nothing in the series it opened
                self.open = None
                self.state["open"] = None
            return
        op.forced[name] = forced
        op.series.files.append(f)
        self.state["open"]["files"].append(name)
        if len(op.series.files) == 1:
            log.info("%s", plan_lines([op.series])[0].replace(" 1 frames, ", " opened: ", 1))
        self._write(outs)

    def _write(self, outs: Sequence[FrameProducts]) -> None:
        """Write the outputs not written yet (a resumed series' earlier frames are only counted)."""
        op = self.open
        for out in outs:
            f: FrameFile = out.tag
            name = self._rel(f.path)
            op.counts = FrameCounts(op.counts.low + out.counts.low, op.counts.high + out.counts.high,
                                    op.counts.vetoed + out.counts.vetoed,
                                    op.counts.out_of_table + out.counts.out_of_table)
            if name in self.state["done"]:
                continue
            path = self.outdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_output(path, f, out, out.counts, self.settings, op.corrector.cube_id, self.cfg.mode,
                         op.forced[name], **self._provenance())
            self.state["done"][name] = op.series.number
            self.written += 1
            log.info("wrote %s (series %d, frame %d: %d low, %d high, %d vetoed%s)", path, op.series.number,
                     out.index + 1, out.counts.low, out.counts.high, out.counts.vetoed,
                     "" if out.corrected else "; passed through uncorrected")
        self._save()

    def _provenance(self) -> dict[str, Any]:
        return {"cube_file": Path(self.cfg.cube_path).name if self.cfg.cube_path else None,
                "origin": self.open.origin, "series": self.open.series.number}

    def _close(self, why: str) -> None:
        """End the open series: its last frames, its bias offset map, its entry in the state."""
        op = self.open
        self._write(op.corrector.finish())
        s = op.series
        corrected = not (self.settings.temporal and s.n_frames < self.settings.window + 1)
        offset = None
        if self.cfg.mode == "correct" and corrected:
            offset = write_offset_map(s, op.corrector, op.counts, self.settings, self.cfg.mode, self._provenance(),
                                      self.outdir / CALIB_DIR)
        if not corrected:
            log.warning("series %d has %d frames, window %d needs %d: passed through uncorrected (RTNCORR = F)",
                        s.number, s.n_frames, self.settings.window, self.settings.window + 1)
        self.state["series"].append({"number": s.number, "reason": s.reason, "ended": why, "frames": s.n_frames,
                                     "first": self._rel(s.files[0].path), "last": self._rel(s.files[-1].path),
                                     "counts": asdict(op.counts), "corrected": corrected,
                                     "bias_offset_map": str(offset) if offset else None})
        self.state["open"] = None
        self.open = None
        self.closed += 1
        self._save()
        log.info("%s; ended: %s", plan_lines([s])[0], why)


def watch_folder(cube: RTNCube, indir: str | os.PathLike, outdir: str | os.PathLike, settings: EngineSettings,
                 config: WatchConfig | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Correct the FITS frames written into ``indir`` as they are completed, until ``stop`` is set.

    Parameters
    ----------
    cube : RTNCube
    indir : path-like
        The folder the camera software saves into (watched with its sub-folders).
    outdir : path-like
        Outputs keep the input's path below ``indir``; ``calib/`` holds the bias offset maps and
        :data:`STATE_NAME` the state. Not ``indir`` itself (inside it, it is left out of the watch).
    settings : EngineSettings
    config : WatchConfig, optional
    stop : threading.Event, optional
        Set it to end the watch: the open series is flushed and the function returns. Without it the watch
        runs until the process ends.

    Returns
    -------
    dict
        ``frames`` written and ``series_closed`` in this run, files ``passed`` over (all runs), the files
        ``incomplete`` (not complete FITS) at the stop, the ``state`` file.

    Raises
    ------
    FrameError
        ``indir`` is not a folder or is ``outdir``, or the state file in ``outdir`` was written with other
        options.
    """
    indir, outdir = Path(indir), Path(outdir)
    if not indir.is_dir():
        raise FrameError(f"{indir}: not a folder")
    if indir.resolve() == outdir.resolve():
        raise FrameError(f"{outdir}: the outputs would overwrite the inputs; choose another -o")
    watch = _Watch(cube, indir, outdir, settings, config or WatchConfig())
    return watch.run(stop or threading.Event())

