"""Experiment configurations as data: one JSON file per benchmark."""

from __future__ import annotations

import json
from pathlib import Path


def load(name: str) -> dict:
  """The configuration ``benchmarks/configs/<name>.json`` as a dict."""
  return json.loads((Path(__file__).parent / f"{name}.json").read_text())
