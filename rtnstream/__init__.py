"""rtnstream: live correction of random telegraph noise in astronomical CMOS cameras."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rtnstream")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "correct_ccddata"]


def __getattr__(name: str):
    """``rtnstream.correct_ccddata`` without importing astropy.nddata for every ``import rtnstream``."""
    if name == "correct_ccddata":
        from rtnstream.api import correct_ccddata

        return correct_ccddata
    raise AttributeError(f"module 'rtnstream' has no attribute {name!r}")
