"""rtnstream: live correction of random telegraph noise in astronomical CMOS cameras."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rtnstream")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
