"""JSON-ready copies of report dictionaries (shared by the calibration reports)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["jsonable"]


def jsonable(value: object) -> object:
    """Copy of ``value`` with numpy scalars as Python numbers and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
