"""Root pytest configuration: the notebooks' kernels run in notebooks/ and
import the examples (``from benchmarks import ...``), which live in the
repository, not in the installed wheel."""

import os
import pathlib

_ROOT = str(pathlib.Path(__file__).parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
