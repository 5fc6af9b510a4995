"""When RTN correction helps: noise of RTN pixels and of faint-source apertures, raw and corrected, versus sky.

For each sky level a simulated IMX455-like sensor (kernels/simulate.py: 5 % RTN pixels, RTN-free read
noise about 1.2 e-, Delta 3-10 sigma, gain 1/3.26 e-/ADU) records a star field; the frames go through the
engine that ``rtnstream correct`` runs (RTNEngine, temporal median W = 10, alpha = 0.003, the sensor's true
cube). Printed per sky level (electron):

* RTN pixels: temporal noise (standard deviation over the frames, RMS over the RTN pixels away from
  stars), raw / corrected / without RTN (the same frames with no jumps: what a perfect correction gives);
* all background pixels: the same over every pixel away from stars;
* blank-sky apertures of radius ``--aperture`` px (the noise of a faint source's photometry): temporal
  noise of the aperture sum, RMS over apertures that hold an RTN pixel, raw / corrected / without RTN,
  and the SNR gain of a faint source there (raw noise / corrected noise);
* the share of jumps corrected and of jump-free pixel-frames corrected by mistake.

    .venv/bin/python bench/regime.py                      # table on stdout, plot docs/when-it-helps.png
    .venv/bin/python bench/regime.py --sky 1 2 5 20 --frames 100 --json out.json
    .venv/bin/python bench/regime.py --files SIM CORRECTED   # the same figures of simulate + correct folders
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from rtnstream.kernels.engine import EngineSettings, RTNEngine  # noqa: E402
from rtnstream.kernels.simulate import Scene, SensorModel  # noqa: E402

DEFAULT_SKY_E = (0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)


def _aperture_sums(images: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Sums of ``images`` (n, ny, nx) in disks of ``radius`` px around ``centres`` (m, 2): shape (n, m)."""
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy**2 + dx**2 <= radius**2
    dy, dx = dy[inside], dx[inside]
    ys = centres[:, 0:1] + dy[None, :]
    xs = centres[:, 1:2] + dx[None, :]
    return images[:, ys, xs].sum(axis=2)


def figures(raw_adu: np.ndarray, corrected_adu: np.ndarray, no_rtn_adu: np.ndarray, bias_adu: np.ndarray,
            gain_e_per_adu: float, rtn_index: np.ndarray, states: np.ndarray, stars_e: np.ndarray,
            aperture_px: float) -> dict:
    """Noise figures of one series (see the module docstring); electron, fractions in [0, 1].

    Parameters
    ----------
    raw_adu, corrected_adu, no_rtn_adu : numpy.ndarray, shape (n, ny, nx), adu
        The frames as recorded, as corrected, and without the RTN jumps.
    bias_adu : numpy.ndarray, shape (ny, nx), adu
    gain_e_per_adu : float
    rtn_index : numpy.ndarray, shape (n_rtn,), flat pixel indices
    states : numpy.ndarray, shape (n, n_rtn), int8
        True trap state of each RTN pixel in each frame (-1, 0, +1).
    stars_e : numpy.ndarray, shape (ny, nx), electron
        Star light per pixel (no sky): "away from stars" means below 0.05 e-.
    aperture_px : float
        Radius of the blank-sky apertures, px.
    """
    n_frames, ny, nx = raw_adu.shape
    g = gain_e_per_adu
    raw_e, corr_e, ideal_e = ((np.asarray(a, np.float64) - bias_adu) * g
                              for a in (raw_adu, corrected_adu, no_rtn_adu))
    background = (stars_e < 0.05).ravel()
    rtn_bg = background[rtn_index]
    rtn_pixels = rtn_index[rtn_bg]

    def pixel_noise(cube_e: np.ndarray, pixels: np.ndarray) -> float:
        flat = cube_e.reshape(n_frames, -1)[:, pixels]
        return float(np.sqrt(np.mean(flat.var(axis=0, ddof=1))))

    everything = np.flatnonzero(background)
    # blank-sky apertures on a grid, the whole disk away from stars, keeping those with an RTN pixel
    r = int(np.ceil(aperture_px))
    grid = np.stack(np.meshgrid(np.arange(r, ny - r, 2 * r + 1), np.arange(r, nx - r, 2 * r + 1),
                                indexing="ij"), axis=-1).reshape(-1, 2)
    area = _aperture_sums(np.ones((1, ny, nx)), grid[:1], aperture_px)[0, 0]
    blank = _aperture_sums(background.reshape(1, ny, nx).astype(np.float64), grid, aperture_px)[0] == area
    rtn_image = np.zeros(ny * nx)
    rtn_image[rtn_index] = 1.0
    with_rtn = _aperture_sums(rtn_image.reshape(1, ny, nx), grid, aperture_px)[0] > 0
    centres = grid[blank & with_rtn]

    def aperture_noise(cube_e: np.ndarray) -> float:
        return float(np.sqrt(np.mean(_aperture_sums(cube_e, centres, aperture_px).var(axis=0, ddof=1))))

    changed = (np.asarray(corrected_adu, np.int64).reshape(n_frames, -1)[:, rtn_index]
               - np.asarray(raw_adu, np.int64).reshape(n_frames, -1)[:, rtn_index])
    direction = -np.sign(changed)  # a correction of a high state moves the value down
    jumps = (states != 0)[:, rtn_bg]
    right = ((direction == states) & (states != 0))[:, rtn_bg]
    wrong = ((changed != 0) & (states == 0))[:, rtn_bg]
    ap_raw, ap_corr, ap_ideal = aperture_noise(raw_e), aperture_noise(corr_e), aperture_noise(ideal_e)
    return {
        "rtn_pixels": int(rtn_pixels.size),
        "rtn_noise_e": {"raw": pixel_noise(raw_e, rtn_pixels), "corrected": pixel_noise(corr_e, rtn_pixels),
                        "no_rtn": pixel_noise(ideal_e, rtn_pixels)},
        "all_noise_e": {"raw": pixel_noise(raw_e, everything), "corrected": pixel_noise(corr_e, everything),
                        "no_rtn": pixel_noise(ideal_e, everything)},
        "apertures": int(centres.shape[0]),
        "aperture_noise_e": {"raw": ap_raw, "corrected": ap_corr, "no_rtn": ap_ideal},
        "faint_source_snr_gain": ap_raw / ap_corr,
        "jumps_corrected": float(right.sum() / max(1, jumps.sum())),
        "false_corrections": float(wrong.sum() / max(1, (~jumps).sum())),
    }


def measure(sky_e: float, n_frames: int, shape: tuple[int, int], aperture_px: float, seed: int) -> dict:
    """Simulate a star field at ``sky_e`` e-/pixel/frame, correct it in memory, return :func:`figures`."""
    sensor = SensorModel.random(shape, rtn_fraction=0.05, seed=seed)
    scene = Scene.make("stars", shape, sky_e=sky_e, n_stars=20, seed=seed + 1)
    engine = RTNEngine(sensor.true_cube(), EngineSettings(), backend="numpy")
    engine.start_series()
    raw, ideal, states, corrected = [], [], [], []
    for frame in sensor.frames(n_frames, scene, seed=seed + 2):
        raw.append(frame.data)
        ideal.append(np.clip(np.rint(frame.clean_adu), 0, 65535))  # the same frame without jumps
        states.append(frame.states)
        corrected += [out.data for out in engine.push(frame.data)]
    corrected += [out.data for out in engine.finish()]
    return {"sky_e": sky_e, **figures(np.stack(raw), np.stack(corrected), np.stack(ideal), sensor.bias_adu,
                                      sensor.gain_e_per_adu, sensor.rtn_index, np.stack(states),
                                      scene.flux_e(0) - sky_e, aperture_px)}


def measure_files(sim_dir: Path, corrected_dir: Path, aperture_px: float) -> dict:
    """:func:`figures` of what ``rtnstream simulate -o SIM --scene stars`` wrote and ``rtnstream correct``
    made of it in ``corrected_dir`` (same file names); the frames without RTN are the recorded ones less
    the true jumps of ``truth.npz``."""
    info = json.loads((sim_dir / "truth.json").read_text())
    truth = np.load(sim_dir / "truth.npz")

    def frames(folder: Path) -> np.ndarray:
        parts = [np.asarray(fits.getdata(folder / name)) for name in info["files"]]
        return np.concatenate([p if p.ndim == 3 else p[None] for p in parts])

    raw, corrected = frames(sim_dir), frames(corrected_dir)
    g = float(truth["gain_e_per_adu"])
    shape = tuple(info["shape"])
    no_rtn = raw.astype(np.float64).reshape(raw.shape[0], -1)
    no_rtn[:, truth["rtn_index"]] -= truth["states"] * truth["delta_e"] / g
    stars = Scene("stars", shape, star_y=truth["star_y"], star_x=truth["star_x"], star_flux_e=truth["star_flux_e"])
    return figures(raw, corrected, no_rtn.reshape(raw.shape), truth["bias_adu"], g, truth["rtn_index"],
                   truth["states"], stars.flux_e(0), aperture_px)


def plot(results: list[dict], path: Path) -> None:
    """Left: noise of RTN pixels versus sky, raw / corrected / without RTN. Right: the SNR gain (raw noise
    over corrected noise) of an RTN pixel and of a faint source in a blank-sky aperture holding one."""
    sky = [r["sky_e"] for r in results]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = {"raw": "raw", "corrected": "corrected", "no_rtn": "no RTN (perfect correction)"}
    for name, style in (("raw", "o-"), ("corrected", "s-"), ("no_rtn", "k--")):
        a1.plot(sky, [r["rtn_noise_e"][name] for r in results], style, label=labels[name])
    a1.set(xscale="log", xlabel="sky (e-/pixel/frame)", ylabel="temporal noise (e-)",
           title="noise of RTN pixels (away from stars)")
    for key, label, style in (("rtn_noise_e", "RTN pixel", "o-"), ("aperture_noise_e", "faint source, aperture "
                                                                   "holding an RTN pixel", "s-")):
        a2.plot(sky, [r[key]["raw"] / r[key]["corrected"] for r in results], style, label=f"{label}: corrected")
        a2.plot(sky, [r[key]["raw"] / r[key]["no_rtn"] for r in results], style[0] + ":", color="grey",
                label=f"{label}: perfect correction")
    a2.axhline(1.0, color="k", lw=0.8)
    a2.set(xscale="log", xlabel="sky (e-/pixel/frame)", ylabel="SNR gain (raw noise / corrected noise)",
           title="what the correction buys")
    for ax in (a1, a2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sky", type=float, nargs="+", default=list(DEFAULT_SKY_E), metavar="E",
                   help="sky levels, e-/pixel/frame")
    p.add_argument("--frames", type=int, default=60, help="frames per sky level")
    p.add_argument("--shape", type=int, nargs=2, default=(256, 256), metavar=("NY", "NX"))
    p.add_argument("--aperture", type=float, default=2.0, help="aperture radius, px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=Path("docs/when-it-helps.png"), help="PNG to write")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--files", type=Path, nargs=2, metavar=("SIM", "CORRECTED"),
                   help="instead: the figures of a 'rtnstream simulate' folder and its 'rtnstream correct' output")
    args = p.parse_args(argv)
    if args.files:
        print(json.dumps(measure_files(*args.files, args.aperture), indent=2))
        return 0
    results = []
    print(f"{'sky':>5} | {'RTN pixels: raw  corr  noRTN':>29} | {'all pixels: raw  corr':>22} | "
          f"{'aperture r=' + format(args.aperture, 'g') + ': raw  corr  noRTN':>33} | SNR x | caught false")
    for sky in args.sky:
        r = measure(sky, args.frames, tuple(args.shape), args.aperture, args.seed)
        results.append(r)
        rn, an, ap = r["rtn_noise_e"], r["all_noise_e"], r["aperture_noise_e"]
        print(f"{sky:5g} | {rn['raw']:17.2f} {rn['corrected']:5.2f} {rn['no_rtn']:6.2f} | "
              f"{an['raw']:16.2f} {an['corrected']:5.2f} | {ap['raw']:21.2f} {ap['corrected']:5.2f} "
              f"{ap['no_rtn']:6.2f} | {r['faint_source_snr_gain']:5.2f} | {100 * r['jumps_corrected']:5.1f}% "
              f"{100 * r['false_corrections']:5.2f}%", flush=True)
    print(f"({results[0]['rtn_pixels']} RTN pixels away from stars, {results[0]['apertures']} apertures, "
          f"{args.frames} frames of {args.shape[0]} x {args.shape[1]} px per sky level; noise in e-)")
    plot(results, args.plot)
    print(f"wrote {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"plot": str(args.plot), "json": str(args.json)},
                                         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
