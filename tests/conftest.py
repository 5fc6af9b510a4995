"""Test-wide set-up, so that the suite tests rtnstream as installed (pytest ``--import-mode=importlib``).

The checkout stays off ``sys.path``: its ``rtnstream/`` folder would shadow the installed package. So
``PYTHONSAFEPATH=1`` for the Python subprocesses tests start from the checkout (``python -c``, ``python -m
rtnstream``, which would otherwise put the working folder first on their path), and the scripts of
``bench/`` (some tests run them) importable as the package ``bench`` without the checkout on the path.
"""

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

os.environ["PYTHONSAFEPATH"] = "1"

if "bench" not in sys.modules:
    _spec = importlib.machinery.ModuleSpec("bench", None, is_package=True)
    _spec.submodule_search_locations = [str(Path(__file__).resolve().parents[1] / "bench")]
    sys.modules["bench"] = importlib.util.module_from_spec(_spec)
