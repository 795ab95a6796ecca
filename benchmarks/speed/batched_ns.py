"""Does batching equal-shaped matrices pay? Muon with and without it.

``normalize_per_block`` stacks the small matrices of equal shape across
leaves (at most ``lmo.BATCH_MAX_ELEMENTS`` entries) and orthogonalizes them
with one batched Newton-Schulz (:func:`normopt._src.lmo.spectral_directions`).
This times, in one run and interleaved, Muon's step as shipped, with every
size batched, and with every leaf orthogonalized on its own, and the
compile time of each, on the step-speed trees and on trees of 100 square
matrices (``square_<n>``).

    python -m benchmarks.speed.batched_ns --trees transformer square_64
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import jax
import optax

import normopt
from benchmarks.speed import step_speed
from benchmarks.speed.timing import finish, interleaved_medians
from normopt._src import lmo

# variant -> the largest matrix batched
VARIANTS = {"as shipped": lmo.BATCH_MAX_ELEMENTS, "all batched": 2 ** 62,
            "one by one": 0}
TREES = {**step_speed.TREES,
         **{f"square_{n}": (lambda n=n: [(n, n)] * 100)
            for n in (32, 64, 128, 256)}}


def _compiled(tx, params, grads, largest: int):
  """The jitted step, compiled now with matrices of up to ``largest``
  entries batched, and the seconds that took."""
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  start = time.perf_counter()
  with mock.patch.object(lmo, "BATCH_MAX_ELEMENTS", largest):
    compiled = jax.jit(step).lower(params, state, grads).compile()
  return compiled, state, time.perf_counter() - start


def measure(tree: str, reps: int) -> list[dict]:
  shapes = TREES[tree]()
  params, grads = step_speed.make_tree(shapes, 0), step_speed.make_tree(
      shapes, 1)
  views = step_speed.conv_views(params)
  tx = normopt.muon(step_speed.LR, weight_dimension_numbers=views)
  runs, rows = {}, []
  for name, largest in VARIANTS.items():
    compiled, state, seconds = _compiled(tx, params, grads, largest)
    runs[name] = (lambda c=compiled, s=state: c(params, s, grads))
    rows.append({"tree": tree, "variant": name, "compile_s": seconds})
  med = interleaved_medians(runs, reps)
  for r in rows:
    r["median_ms"] = 1e3 * med[r["variant"]]
    r["vs_one_by_one"] = med[r["variant"]] / med["one by one"]
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trees", nargs="+", default=["transformer",
                                                     "resnet50"],
                      choices=list(TREES))
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  rows = [r for tree in args.trees for r in measure(tree, args.reps)]
  print("| tree | Muon's orthogonalization | step ms (× one by one) | "
        "compile s |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['tree']} | {r['variant']} | {r['median_ms']:.1f} "
          f"({r['vs_one_by_one']:.2f}×) | {r['compile_s']:.2f} |")
  finish(rows, args.json, f"optax {optax.__version__}, reps {args.reps}")


if __name__ == "__main__":
  main()
