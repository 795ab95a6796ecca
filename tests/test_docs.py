"""The documentation: every public name has an API page, and the site builds
with warnings as errors (which also executes every notebook at its small
size: a failing cell fails the build)."""

import pathlib
import re
import subprocess
import sys

import normopt

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_api_reference_lists_every_public_name():
  listed = set(re.findall(r"^   (\w+)$", (DOCS / "api.rst").read_text(),
                          re.MULTILINE))
  assert set(normopt.__all__) <= listed, set(normopt.__all__) - listed


def test_every_method_has_a_guide_page():
  methods = [n for n in normopt.__all__ if (DOCS / "methods" / f"{n}.md").exists()]
  assert len(methods) >= 12
  index = (DOCS / "methods" / "index.md").read_text()
  assert all(m in index for m in methods)


def test_docs_build_without_warnings(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
       "html", "-d", str(tmp_path / "doctrees"), str(DOCS),
       str(tmp_path / "html")], capture_output=True, text=True, timeout=1500)
  errors = [line for line in result.stderr.splitlines()
            if "IPKernelApp" not in line]
  assert result.returncode == 0, "\n".join(errors[-40:])
  assert (tmp_path / "html" / "api" / "generated" / "normopt.sngm.html").exists()


def _python_blocks(path):
  return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_is_a_guide_whose_code_runs():
  """README: at most 200 lines, a complete NNX loop before any results
  table, and its python blocks, run in order in a fresh interpreter, exit 0;
  likewise the NNX guide."""
  readme = DOCS.parent / "README.md"
  text = readme.read_text()
  assert len(text.splitlines()) <= 200
  assert text.index("nnx.Optimizer") < text.index("| batch 128")
  for path in (readme, DOCS / "nnx.md"):
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(_python_blocks(path))],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (path.name, result.stderr[-3000:])
