"""``rtnstream characterize``: measure a CMOS camera from bias, dark and flat stacks and write a report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rtnstream.calibration.characterize import characterize, characterize_emva
from rtnstream.calibration.report import write_report

__all__ = ["configure", "run"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtnstream characterize`` to ``parser``."""
    parser.add_argument("--bias", nargs="+", default=[], metavar="FILE", help="bias FITS files (2D or 3D)")
    parser.add_argument("--dark", nargs="+", default=[], metavar="FILE", help="dark FITS files")
    parser.add_argument("--flat", nargs="+", default=[], metavar="FILE", help="flat FITS files")
    parser.add_argument("--emva", type=Path, default=None, metavar="DESCRIPTOR",
                        help="EMVA 1288 data set: its EMVA1288_Data.txt (PNG/TIFF images, needs the 'emva' extra)")
    parser.add_argument("--photons-key", default="PHOTONS",
                        help="FITS header keyword of the flats' mean photons per pixel (EMVA 1288 QE)")
    parser.add_argument("--exptime-key", default="EXPTIME", help="header keyword of the exposure time, s")
    parser.add_argument("--region", type=int, default=2000, metavar="PX",
                        help="side of the central square region, pixels")
    parser.add_argument("--gain-e-per-adu", type=float, default=None,
                        help="gain for dark current in electrons when the flats cannot give one, e-/ADU")
    parser.add_argument("--saturation-adu", type=float, default=None,
                        help="flat saturation level, adu (default: SATURATE keyword or the integer maximum)")
    parser.add_argument("--min-pixel-flats", type=int, default=10,
                        help="fewest flats at one exposure time for the pixel-level maps")
    parser.add_argument("--memory-mb", type=float, default=256, help="memory budget of one row band, MiB")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="REPORTDIR",
                        help="folder for report.json, report.html, plots and FITS maps")


def run(args: argparse.Namespace) -> int:
    """Characterize the camera and write the report; returns 0, or 1 when nothing could be measured."""
    if args.emva is not None:
        if args.bias or args.dark or args.flat:
            raise SystemExit("rtnstream characterize: error: --emva reads its own images; drop --bias/--dark/--flat")
        if not args.emva.is_file():
            raise SystemExit(f"rtnstream characterize: error: --emva: no such file: {args.emva}")
        result = characterize_emva(args.emva, progress=not args.no_progress)
        written = write_report(result, args.output)
        log.info("wrote %d files to %s; open %s", len(written), args.output, written["report.html"])
        return 0 if result.report["emva1288"]["gain_e_per_adu"] is not None else 1
    if not (args.bias or args.dark or args.flat):
        raise SystemExit("rtnstream characterize: error: give --emva, or at least one of --bias, --dark, --flat")
    result = characterize(
        args.bias, args.dark, args.flat,
        exptime_key=args.exptime_key,
        region_px=args.region,
        max_bytes=int(args.memory_mb * 1024**2),
        gain_e_per_adu=args.gain_e_per_adu,
        saturation_adu=args.saturation_adu,
        photons_key=args.photons_key,
        min_pixel_flats=args.min_pixel_flats,
        progress=not args.no_progress,
    )
    written = write_report(result, args.output)
    log.info("wrote %d files to %s; open %s", len(written), args.output, written["report.html"])
    for item in result.report["not_measured"]:
        log.info("not measured: %s (%s)", item["measurement"], item["reason"])
    return 0 if "bias" in result.report else 1
