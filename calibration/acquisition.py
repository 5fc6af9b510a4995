"""Acquisition keywords of FITS headers as N.I.N.A., SharpCap, MaxIm DL, Ekos and ASCOM drivers write them.

Three questions a calibration asks of the frames' headers, each answered from one keyword table below:

* :func:`camera_record`: which camera, at which setting (instrument, serial, gain setting, offset, readout
  mode, binning, temperatures), as a plain dict that the fit report and the cube's camera record share;
* :func:`header_gain`: the conversion gain in e-/ADU, when the headers say it unambiguously;
* :func:`frame_kind` / :func:`check_frame_kinds`: the frame type (IMAGETYP), so a fit takes bias frames only.

``GAIN`` is the trap: N.I.N.A., SharpCap and the ASCOM / INDI drivers write the camera's gain *setting*
(e.g. ``GAIN = 56``) under it, while MaxIm DL and most observatory pipelines write e-/ADU under ``EGAIN``
(N.I.N.A. writes both). So ``GAIN`` is read as a conversion gain only when its comment states the unit,
and is otherwise the gain setting.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from astropy.io import fits

__all__ = [
    "CAMERA_KEYWORDS",
    "GAIN_KEYWORDS",
    "FRAME_KINDS",
    "GainSource",
    "camera_record",
    "common_camera_record",
    "header_gain",
    "frame_kind",
    "check_frame_kinds",
]

#: Camera record field -> header keywords, first present wins (see docs/fit.md, "Header keywords").
CAMERA_KEYWORDS: dict[str, tuple[str, ...]] = {
    "instrument": ("INSTRUME",),
    "serial": ("SERIALNO", "CAMSERIA", "SERIAL", "CAMSN", "CAMERAID"),
    "detector": ("DETECTOR",),
    "gain_setting": ("GAINSET", "GAIN"),  # GAIN only when it is not a conversion gain (see header_gain)
    "offset": ("OFFSET", "BLKLEVEL"),
    "readout_mode": ("READOUTM", "READMODE", "READOUT"),
    "x_binning": ("XBINNING",),
    "y_binning": ("YBINNING",),
    "ccd_temp_c": ("CCD-TEMP", "CCD_TEMP", "SENSTEMP"),
    "set_temp_c": ("SET-TEMP", "SET_TEMP"),
    "egain_e_per_adu": ("EGAIN",),
    "x_subframe_origin": ("XORGSUBF",),
    "y_subframe_origin": ("YORGSUBF",),
}
#: Fields of :data:`CAMERA_KEYWORDS` that vary from frame to frame at one setting (not compared).
_VARYING = frozenset({"ccd_temp_c"})

#: Conversion-gain keywords, in order of preference: (keyword, unit the value is in when taken).
GAIN_KEYWORDS = (("EGAIN", "e-/ADU"), ("GAIN", "e-/ADU or ADU/e- only when its comment says so"))
_E_PER_ADU = re.compile(r"e-?\s*(?:/|per)\s*adu|electrons?\s*(?:/|per)\s*adu", re.IGNORECASE)
_ADU_PER_E = re.compile(r"adu\s*(?:/|per)\s*(?:e-?|electrons?)\b", re.IGNORECASE)

#: Frame kinds and the IMAGETYP (or FRAME) spellings that mean them, lower case, after the suffixes
#: " frame" / " field" are removed (MaxIm DL and Ekos write 'Bias Frame', 'Flat Field', N.I.N.A. 'BIAS',
#: SharpCap 'Bias', IRAF 'zero').
FRAME_KINDS: dict[str, frozenset[str]] = {
    "bias": frozenset({"bias", "zero", "offset", "masterbias", "master bias"}),
    "dark": frozenset({"dark", "masterdark", "master dark"}),
    "flat": frozenset({"flat", "masterflat", "master flat", "sky flat", "dome flat"}),
    "darkflat": frozenset({"darkflat", "dark flat", "flatdark", "flat dark"}),
    "light": frozenset({"light", "object", "science", "snapshot"}),
}


def _first(header: fits.Header, keys: Iterable[str]) -> tuple[str | None, object]:
    for key in keys:
        if key in header and header[key] is not None and not isinstance(header[key], fits.card.Undefined):
            return key, header[key]
    return None, None


def _gain_unit(header: fits.Header) -> str | None:
    """'e-/ADU' or 'ADU/e-' when the comment of GAIN states that unit, else None (a gain setting)."""
    if "GAIN" not in header:
        return None
    comment = header.comments["GAIN"]
    if _E_PER_ADU.search(comment):
        return "e-/ADU"
    if _ADU_PER_E.search(comment):
        return "ADU/e-"
    return None


def _plain(value: object) -> object:
    """A header value as a JSON-ready Python value (strings stripped)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool | int | float):
        return value
    return str(value)


def camera_record(header: fits.Header) -> dict[str, object]:
    """The camera and its setting as one frame's header gives them.

    Parameters
    ----------
    header : astropy.io.fits.Header
        A frame's header (the image HDU's, completed with the primary header's keywords).

    Returns
    -------
    dict
        Fields of :data:`CAMERA_KEYWORDS` that the header has (strings stripped; temperatures in deg C,
        ``egain_e_per_adu`` in e-/ADU), plus ``keywords``: field -> the keyword each value came from.
        ``gain_setting`` comes from ``GAIN`` only when ``GAIN`` is not a conversion gain.
    """
    record: dict[str, object] = {}
    source: dict[str, str] = {}
    for name, keys in CAMERA_KEYWORDS.items():
        if name == "gain_setting" and _gain_unit(header) is not None:
            keys = tuple(k for k in keys if k != "GAIN")
        key, value = _first(header, keys)
        if key is not None:
            record[name] = _plain(value)
            source[name] = key
    record["keywords"] = source
    return record


def common_camera_record(headers: Sequence[fits.Header], names: Sequence[str | os.PathLike] | None = None
                         ) -> dict[str, object]:
    """The camera record shared by every frame of a calibration set.

    Parameters
    ----------
    headers : sequence of astropy.io.fits.Header
        One per frame.
    names : sequence of str or path-like, optional
        The frames' files (same length), named in the error message.

    Returns
    -------
    dict
        :func:`camera_record` fields whose value every frame that has the field agrees on; ``ccd_temp_c``
        becomes the median over the frames, with ``ccd_temp_range_c`` ``[min, max]``; ``keywords`` as in
        :func:`camera_record`.

    Raises
    ------
    ValueError
        Two frames disagree on a setting (anything but the sensor temperature): the message names the
        field, its keyword, both values and both files. A calibration holds for one setting only.
    """
    if not headers:
        raise ValueError("headers: empty, a calibration set needs at least one frame")
    labels = [str(n) for n in names] if names is not None else [f"frame {i}" for i in range(len(headers))]
    merged: dict[str, object] = {}
    first_at: dict[str, int] = {}
    keywords: dict[str, str] = {}
    temps: list[float] = []
    for i, header in enumerate(headers):
        record = camera_record(header)
        keywords.update({k: v for k, v in record.pop("keywords").items() if k not in keywords})
        for name, value in record.items():
            if name in _VARYING:
                if isinstance(value, int | float) and math.isfinite(value):
                    temps.append(float(value))
                continue
            if name not in merged:
                merged[name], first_at[name] = value, i
            elif merged[name] != value:
                raise ValueError(
                    f"{labels[i]}: {keywords[name]} = {value!r} differs from {merged[name]!r} of "
                    f"{labels[first_at[name]]}; an RTN calibration holds for one camera setting "
                    f"({name.replace('_', ' ')}): fit each setting separately")
    if temps:
        temps.sort()
        mid = len(temps) // 2
        merged["ccd_temp_c"] = temps[mid] if len(temps) % 2 else 0.5 * (temps[mid - 1] + temps[mid])
        merged["ccd_temp_range_c"] = [temps[0], temps[-1]]
    merged["keywords"] = keywords
    return merged


@dataclass(frozen=True)
class GainSource:
    """A conversion gain and where it came from.

    Attributes
    ----------
    gain_e_per_adu : float
        Conversion gain, e-/ADU.
    source : str
        ``'option'`` (given by the caller) or the header keyword (``'EGAIN'``, ``'GAIN'``).
    detail : str
        One line for the user, e.g. ``EGAIN = 0.3067 e-/ADU in all 1000 frames``.
    """

    gain_e_per_adu: float
    source: str
    detail: str


def header_gain(headers: Sequence[fits.Header], names: Sequence[str | os.PathLike] | None = None) -> GainSource:
    """The conversion gain the headers give, in e-/ADU.

    ``EGAIN`` (e-/ADU) is used when every frame has it; otherwise ``GAIN`` when every frame's ``GAIN``
    comment states its unit (``e-/ADU``, or ``ADU/e-``, then inverted). A ``GAIN`` without a unit in its
    comment is the camera's gain setting (N.I.N.A., SharpCap, ASCOM / INDI drivers), never a conversion gain.

    Parameters
    ----------
    headers : sequence of astropy.io.fits.Header
        One per frame.
    names : sequence of str or path-like, optional
        The frames' files, named in error messages.

    Returns
    -------
    GainSource

    Raises
    ------
    ValueError
        No keyword gives the gain in every frame (the message says what was found and names the option
        ``--gain-e-per-adu``), the frames disagree (both values and files named), or a value is not a
        finite positive number.
    """
    if not headers:
        raise ValueError("headers: empty, a calibration set needs at least one frame")
    labels = [str(n) for n in names] if names is not None else [f"frame {i}" for i in range(len(headers))]
    units = {_gain_unit(h) for h in headers}
    if all("EGAIN" in h for h in headers):
        key, unit, values = "EGAIN", "e-/ADU", [h["EGAIN"] for h in headers]
    elif len(units) == 1 and None not in units:
        key, unit, values = "GAIN", units.pop(), [h["GAIN"] for h in headers]
    else:
        has_gain = sum("GAIN" in h for h in headers)
        has_egain = sum("EGAIN" in h for h in headers)
        found = f"EGAIN is in {has_egain} of {len(headers)} frames; " if has_egain else "no frame has EGAIN; "
        found += (f"GAIN in {has_gain} frames is the camera's gain setting (no e-/ADU unit in its comment)"
                  if has_gain else "no frame has GAIN")
        raise ValueError(f"no conversion gain in the headers ({found}): give --gain-e-per-adu (e-/ADU) or "
                         "--gain-adu-per-e")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{labels[i]}: {key} = {v!r} is not a finite positive conversion gain; give "
                             "--gain-e-per-adu")
        if not math.isclose(v, values[0], rel_tol=1e-6):
            raise ValueError(f"{labels[i]}: {key} = {v!r}, {labels[0]} has {values[0]!r}; the frames must "
                             "share one gain: give --gain-e-per-adu")
    gain = float(values[0]) if unit == "e-/ADU" else 1.0 / float(values[0])
    detail = f"{key} = {values[0]!r} {unit} in all {len(headers)} frames"
    if unit != "e-/ADU":
        detail += f": {gain:.6g} e-/ADU"
    return GainSource(gain, key, detail)


def frame_kind(header: fits.Header) -> str | None:
    """The frame type of a header: a key of :data:`FRAME_KINDS`, the value itself (lower case) when it is
    none of those, or None when neither ``IMAGETYP`` nor ``FRAME`` is present."""
    key, value = _first(header, ("IMAGETYP", "FRAME"))
    return None if key is None else _kind(str(value))


def _kind(value: str) -> str:
    """The key of :data:`FRAME_KINDS` that ``value`` spells, else ``value`` normalised (lower case)."""
    text = re.sub(r"\s+", " ", value.strip().lower())
    text = re.sub(r"[ _-]?(frame|field)$", "", text).strip()
    for kind, spellings in FRAME_KINDS.items():
        if text in spellings:
            return kind
    return text


def check_frame_kinds(headers: Sequence[fits.Header], names: Sequence[str | os.PathLike] | None = None,
                      allowed: Iterable[str] = ("bias",)) -> dict[str, int]:
    """Check that every frame is of an allowed type; returns how many frames of each type were seen.

    Parameters
    ----------
    headers : sequence of astropy.io.fits.Header
        One per frame.
    names : sequence of str or path-like, optional
        The frames' files, named in the error message.
    allowed : iterable of str
        Frame kinds accepted: keys of :data:`FRAME_KINDS` or any spelling of them (``'Dark Frame'``), or
        other IMAGETYP values (compared in lower case).
        Frames without ``IMAGETYP`` / ``FRAME`` are accepted and counted under ``'unknown'``.

    Returns
    -------
    dict of str to int
        Frame kind (``'unknown'`` for frames without the keyword) -> number of frames.

    Raises
    ------
    ValueError
        A frame of another type: the message names the file, the keyword's value and the option
        ``--allow-imagetyp``.
    """
    allowed = {_kind(str(a)) for a in allowed}
    labels = [str(n) for n in names] if names is not None else [f"frame {i}" for i in range(len(headers))]
    seen: dict[str, int] = {}
    for i, header in enumerate(headers):
        kind = frame_kind(header)
        if kind is not None and kind not in allowed:
            key, value = _first(header, ("IMAGETYP", "FRAME"))
            raise ValueError(f"{labels[i]}: {key} = {value!r} ({kind} frame), but only "
                             f"{', '.join(sorted(allowed))} frames are fitted; give --allow-imagetyp {kind} "
                             "to fit it anyway")
        seen[kind or "unknown"] = seen.get(kind or "unknown", 0) + 1
    return seen
