"""``report.json``, ``report.html`` and the PNG plots of an evaluation, and of the Monte Carlo prediction.

The three panels follow the RTN paper's Fig. 7: (a) noise-to-signal ratio of every star's raw, corrected and
masked light curve against its flux, with the cube's prediction; (b) SNR improvement of correction and of
masking against the count rate, per star and as medians by bin, with the predicted improvement overlaid;
(c) the improvement against the number of RTN pixels in the aperture. ``flux_bias.png`` shows the flux bias
of corrected frames without and with the bias offset map; ``stars/star_NNNN.png`` each star's light curves.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rtnstream import __version__
from rtnstream.evaluate.lightcurves import differential

__all__ = ["write_report", "write_prediction", "PANELS"]

#: the plots of report.html: file name -> caption
PANELS = {
    "snr_vs_flux.png": "(a) noise-to-signal ratio of each star's light curve against its flux",
    "improvement_vs_rate.png": "(b) SNR improvement against count rate, measured and predicted",
    "improvement_vs_nrtn.png": "(c) SNR improvement against the number of RTN pixels in the aperture",
    "flux_bias.png": "flux bias of corrected photometry without and with the bias offset map",
}

_COLOURS = {"raw": "tab:blue", "corrected": "tab:orange", "masked": "tab:green", "ideal": "tab:gray"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _col(stars: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if s[key] is None else s[key] for s in stars], dtype=np.float64)


def _binned(x: np.ndarray, y: np.ndarray, n_bins: int = 6) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    if ok.sum() < 2:
        return np.zeros(0), np.zeros(0)
    edges = np.quantile(x[ok], np.linspace(0, 1, min(n_bins, int(ok.sum())) + 1))
    centres, medians = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = ok & (x >= lo) & (x <= hi)
        if sel.any():
            centres.append(np.median(x[sel]))
            medians.append(np.median(y[sel]))
    return np.array(centres), np.array(medians)


def _plot_panels(stars: list[dict], outdir: Path) -> None:
    plt = _pyplot()
    flux = _col(stars, "flux_e")
    rate = _col(stars, "count_rate_e_per_pix")
    nrtn = _col(stars, "n_rtn_in_aperture")
    has = nrtn > 0

    fig, ax = plt.subplots(figsize=(7, 5))
    for name in ("raw", "corrected", "masked"):
        ax.scatter(flux, 1 / _col(stars, f"snr_{name}"), s=12, color=_COLOURS[name], label=name, alpha=0.8)
    order = np.argsort(flux)
    for name, colour in (("raw", "tab:blue"), ("corrected", "tab:red")):
        ax.plot(flux[order], 1 / _col(stars, f"predicted_snr_{name}")[order], color=colour, lw=0.8, ls="--",
                label=f"{name}, predicted from the cube")
    ax.set(xscale="log", yscale="log", xlabel="mean flux (e-/frame)", ylabel="noise-to-signal ratio (1/SNR)",
           title="(a) light-curve NSR against flux")
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "snr_vs_flux.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, marker in (("corrected", "o"), ("masked", "s")):
        y = _col(stars, f"improvement_{name}_pct")
        ax.scatter(rate[has], y[has], s=8 + 8 * nrtn[has], marker=marker, color=_COLOURS[name], alpha=0.5,
                   label=f"{name} (size: RTN pixels)")
        bx, by = _binned(rate[has], y[has])
        ax.plot(bx, by, color=_COLOURS[name], lw=2, label=f"{name}, median by bin")
        px, py = _binned(rate[has], _col(stars, f"predicted_improvement_{name}_pct")[has])
        ax.plot(px, py, color=_COLOURS[name], lw=1.2, ls="--", label=f"{name}, predicted from the cube")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xscale="log", xlabel="count rate in the aperture (e-/pixel/frame)", ylabel="SNR improvement (%)",
           title="(b) improvement against count rate (stars with RTN pixels)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "improvement_vs_rate.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    rng = np.random.default_rng(0)
    for name, shift in (("corrected", -0.12), ("masked", 0.12)):
        y = _col(stars, f"improvement_{name}_pct")
        ax.scatter(nrtn + shift + rng.uniform(-0.05, 0.05, nrtn.size), y, s=10, color=_COLOURS[name], alpha=0.5,
                   label=name)
        levels = np.unique(nrtn[np.isfinite(y)])
        ax.plot(levels, [np.median(y[(nrtn == n) & np.isfinite(y)]) for n in levels], color=_COLOURS[name], lw=2,
                label=f"{name}, median")
        p = _col(stars, f"predicted_improvement_{name}_pct")
        ax.plot(levels, [np.nanmedian(p[nrtn == n]) for n in levels], color=_COLOURS[name], lw=1.2, ls="--",
                label=f"{name}, predicted from the cube")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="RTN pixels in the aperture", ylabel="SNR improvement (%)",
           title="(c) improvement against RTN pixels in the aperture")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "improvement_vs_nrtn.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for key, colour, label in (("flux_bias_pct_without_offset", "tab:red", "without the offset map"),
                               ("flux_bias_pct_with_offset", "tab:orange", "with the offset map")):
        ax.scatter(flux[has], _col(stars, key)[has], s=12, color=colour, label=label, alpha=0.8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xscale="log", xlabel="mean flux (e-/frame)", ylabel="corrected / raw mean flux - 1 (%)",
           title="flux bias of corrected photometry (stars with RTN pixels)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "flux_bias.png", dpi=110)
    plt.close(fig)


def _plot_stars(evaluation, outdir: Path, max_plots: int, progress: bool | None) -> list[str]:
    plt = _pyplot()
    diff, _ = differential(evaluation.curves, evaluation.n_comparison)
    folder = outdir / "stars"
    folder.mkdir(exist_ok=True)
    names = []
    t = np.arange(evaluation.curves.n_frames)
    for k in tqdm(range(min(max_plots, len(evaluation.stars))), unit="star", desc="star plots",
                  disable=(not progress) if progress is not None else None):
        star = evaluation.stars[k]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for name in ("raw", "corrected", "masked"):
            curve = diff[name][:, k]
            ax.plot(t, curve / np.mean(curve), lw=0.7, color=_COLOURS[name],
                    label=f"{name}: SNR {star[f'snr_{name}'] or float('nan'):.1f}")
        ax.set(xlabel="frame", ylabel="normalised flux",
               title=f"star {star['id']} at ({star['x']:.1f}, {star['y']:.1f}): {star['flux_e']:.0f} e-, "
                     f"{star['n_rtn_in_aperture']} RTN px")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        name = f"star_{star['id']:04d}.png"
        fig.savefig(folder / name, dpi=90)
        plt.close(fig)
        names.append(f"stars/{name}")
    return names


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[dict], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_STAR_KEYS = ["id", "x", "y", "flux_e", "count_rate_e_per_pix", "n_rtn_in_aperture", "snr_raw", "snr_corrected",
              "snr_masked", "improvement_corrected_pct", "improvement_masked_pct",
              "predicted_improvement_corrected_pct", "predicted_improvement_masked_pct",
              "flux_bias_pct_without_offset", "flux_bias_pct_with_offset", "comparison"]
_BIN_KEYS = ["flux_e_min", "flux_e_max", "n_stars", "n_with_rtn", "improvement_corrected_pct",
             "improvement_masked_pct", "predicted_improvement_corrected_pct", "predicted_improvement_masked_pct",
             "flux_bias_pct_without_offset", "flux_bias_pct_with_offset"]


def write_report(evaluation, outdir: str | os.PathLike, max_star_plots: int = 50,
                 progress: bool | None = None) -> dict[str, Path]:
    """Write ``report.json``, the plots of :data:`PANELS`, per-star light-curve plots and ``report.html``.

    Parameters
    ----------
    evaluation : rtnstream.evaluate.Evaluation
    outdir : path-like
    max_star_plots : int
        Light-curve plots for the first this many stars (0: none).
    progress : bool, optional

    Returns
    -------
    dict
        ``{'json': path, 'html': path}``.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"software_version": __version__, **evaluation.info, "summary": evaluation.summary,
              "stars": evaluation.stars}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot_panels(evaluation.stars, out)
    star_plots = _plot_stars(evaluation, out, max(0, int(max_star_plots)), progress)
    s = evaluation.summary
    info = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in evaluation.info.items()
                   if not isinstance(v, dict | list))
    panels = "".join(f'<figure><img src="{name}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}'
                     "</figcaption></figure>" for name, cap in PANELS.items())
    overall = _table([{"stars": "all", **s["all"]}, {"stars": "with RTN pixels", **s["with_rtn"]}],
                     ["stars", "n_stars", "improvement_corrected_pct", "improvement_masked_pct",
                      "predicted_improvement_corrected_pct", "predicted_improvement_masked_pct",
                      "flux_bias_pct_without_offset", "flux_bias_pct_with_offset"])
    thumbs = "".join(f'<a href="{p}"><img class="thumb" src="{p}" alt="{p}"></a>' for p in star_plots)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rtnstream evaluate</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}figure{{display:inline-block;margin:0.5em}}
img{{max-width:560px}}img.thumb{{max-width:280px}}</style></head><body>
<h1>Photometric evaluation of RTN correction and masking</h1>
<p>SNR improvements are the percent change of a star's light-curve SNR against the raw frames' (medians over
stars with RTN pixels in the aperture). How to read this report: docs/evaluate.md.</p>
<table>{info}</table>
<h2>Summary (medians)</h2>{overall}
<h2>By flux (medians over stars with RTN pixels)</h2>{_table(s["flux_bins"], _BIN_KEYS)}
<h2>Panels</h2>{panels}
<h2>Stars</h2>{_table(evaluation.stars, _STAR_KEYS)}
<h2>Light curves</h2>{thumbs}
</body></html>
"""
    (out / "report.html").write_text(page)
    return {"json": out / "report.json", "html": out / "report.html"}


def write_prediction(results: list[dict], outdir: str | os.PathLike) -> dict[str, Path]:
    """``predict.json`` and ``predict.png`` of :func:`rtnstream.evaluate.prediction.monte_carlo` results (one
    per FWHM and RTN fraction): SNR improvement of correction, masking and no RTN against flux, medians and
    interquartile bands."""
    plt = _pyplot()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    serial = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in results]
    (out / "predict.json").write_text(json.dumps({"software_version": __version__, "runs": serial}, indent=2))
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], results, strict=True):
        for name in ("corrected", "masked", "ideal"):
            pct = {q: 100 * (np.asarray(r[f"gain_{name}_{q}"]) - 1) for q in ("median", "q25", "q75")}
            ax.plot(r["flux_e"], pct["median"], color=_COLOURS[name], label="no RTN" if name == "ideal" else name)
            ax.fill_between(r["flux_e"], pct["q25"], pct["q75"], color=_COLOURS[name], alpha=0.2)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xscale="log", xlabel="source flux (e-/frame)",
               title=f"FWHM {r['fwhm_px']:g} px, RTN {100 * r['rtn_fraction']:.1f} %, sky {r['sky_e']:g} e-")
    axes[0][0].set_ylabel("SNR improvement over raw (%)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out / "predict.png", dpi=110)
    plt.close(fig)
    return {"json": out / "predict.json", "png": out / "predict.png"}
