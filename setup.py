"""Package discovery for setuptools: every package and data folder under each folder pyproject.toml maps.

``[tool.setuptools.package-dir]`` maps the top-level folders (``kernels/`` -> ``rtnstream.kernels``, ...);
this adds each of them and every subpackage found beneath it (``service/routers`` ->
``rtnstream.service.routers``, ``config/cameras`` -> ``rtnstream.config.cameras``), so a new subpackage is
packaged without a hand-kept list. Which data files go in is ``[tool.setuptools.package-data]``; everything
else is declared in pyproject.toml.
"""

import tomllib
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def packages(name: str, folder: Path) -> list[str]:
    """``name`` and every folder below ``folder`` as a subpackage of it (``__pycache__`` left out)."""
    found = find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])
    return [name, *(f"{name}.{sub}" for sub in found)]


setup(packages=[p for name, folder in PACKAGE_DIR.items() for p in packages(name, HERE / folder)])
