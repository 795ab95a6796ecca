"""Sphinx configuration: API reference from the docstrings (autodoc,
autosummary, napoleon for their Google style), math with MathJax, guides in
Markdown and the notebooks executed at their small size (myst-nb).

    sphinx-build -W -b html docs docs/_build/html
"""

import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The notebooks' kernels import the examples from the repository.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("MPLBACKEND", "Agg")

import normopt  # noqa: E402

# The notebooks live in notebooks/ (tests and users run them there); the
# docs render copies, executed at build time.
_NOTEBOOKS = pathlib.Path(__file__).parent / "notebooks"
shutil.rmtree(_NOTEBOOKS, ignore_errors=True)
shutil.copytree(ROOT / "notebooks", _NOTEBOOKS,
                ignore=shutil.ignore_patterns(".ipynb_checkpoints"))

project = "normopt"
author = "the normopt authors"
copyright = "2026, the normopt authors"
release = normopt.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb",
                 ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints"]

autosummary_generate = True
autodoc_typehints = "description"
autodoc_type_aliases = {"ScalarOrSchedule": "optax.ScalarOrSchedule",
                        "BlockSpec": "normopt._src.blocks.BlockSpec",
                        "Mask": "normopt._src.trust.Mask"}
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_custom_sections = [("References", "notes_style")]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# Execute every notebook at its small size; a failing cell fails the build.
nb_execution_mode = "force"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True

html_theme = "sphinx_book_theme"
html_title = f"normopt {release}"
html_theme_options = {"show_toc_level": 2}
nitpicky = False
