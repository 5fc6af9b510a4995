"""Make a checkout importable as ``rtnstream`` without installing it: a folder of links in the package layout.

The checkout's top-level folders map onto one package (pyproject.toml, ``[tool.setuptools.package-dir]``:
``rtnstream.kernels`` is ``kernels/``...), so the checkout itself cannot go on ``sys.path`` (its
``rtnstream/`` folder lacks the subpackages, and shadows an installed rtnstream when Python starts in
the checkout). This builds ``DEST/rtnstream/`` from links: the files of ``rtnstream/`` and one link per
mapped subpackage. With ``PYTHONPATH=DEST``, run from outside the checkout, ``import rtnstream`` then
gets that checkout's code (no build, no setuptools: works offline and on a bare GPU machine).

    python bench/layout.py CHECKOUT DEST      # prints DEST
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path


def make_layout(checkout: str | Path, dest: str | Path) -> Path:
    """Build ``dest/rtnstream`` as links into ``checkout``; returns ``dest`` (to put on PYTHONPATH).

    Raises
    ------
    FileNotFoundError
        ``checkout`` has no pyproject.toml.
    FileExistsError
        ``dest/rtnstream`` exists already.
    """
    checkout, dest = Path(checkout).resolve(), Path(dest)
    config = tomllib.loads((checkout / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir = config["tool"]["setuptools"]["package-dir"]
    root = dest / "rtnstream"
    root.mkdir(parents=True)
    for entry in (checkout / package_dir["rtnstream"]).iterdir():
        if entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry)
    for package, folder in package_dir.items():
        if package != "rtnstream":
            (root / package.split(".", 1)[1]).symlink_to(checkout / folder)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout")
    ap.add_argument("dest")
    args = ap.parse_args()
    print(make_layout(args.checkout, args.dest))


if __name__ == "__main__":
    main()
