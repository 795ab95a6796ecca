"""Interleaved timing: every candidate measured in the same run, round-robin
in a fresh random order each round, so machine noise hits all alike."""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Callable

import jax
import numpy as np


def interleaved_medians(candidates: dict[str, Callable[[], object]],
                        reps: int) -> dict[str, float]:
  """Median seconds of each zero-argument callable (its result is blocked
  on); each is called once first to compile and warm up."""
  for fn in candidates.values():
    jax.block_until_ready(fn())
  times: dict[str, list[float]] = {name: [] for name in candidates}
  order = list(candidates)
  for _ in range(reps):
    random.shuffle(order)
    for name in order:
      start = time.perf_counter()
      jax.block_until_ready(candidates[name]())
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def finish(rows: list[dict], json_path: str | None, details: str) -> None:
  """Prints the machine line under a table and writes ``rows`` as JSON."""
  print(f"\n{jax.devices()[0].device_kind} ({platform.machine()}), "
        f"jax {jax.__version__}, {details}")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(rows, f, indent=2)
