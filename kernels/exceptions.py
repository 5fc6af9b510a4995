"""Domain errors of rtnstream, one module so callers can catch them by kind."""

__all__ = [
    "RTNStreamError",
    "CubeFormatError",
    "FrameError",
    "SeriesError",
    "BackendUnavailableError",
]


class RTNStreamError(Exception):
    """Base class of every error rtnstream raises on purpose."""


class CubeFormatError(RTNStreamError, ValueError):
    """An RTN calibration file is missing a part, has a wrong shape or unit, or holds invalid values."""


class FrameError(RTNStreamError, ValueError):
    """A frame does not fit the job: wrong shape, unsupported dtype, unreadable FITS."""


class SeriesError(RTNStreamError, ValueError):
    """A series cannot be corrected as asked (for example, shorter than the temporal window)."""


class BackendUnavailableError(RTNStreamError, RuntimeError):
    """The requested compute backend cannot run here (for example, CuPy without a CUDA device)."""
