"""Compile time: lowering and XLA compile seconds of one optimizer step.

A user pays the optimizer's compile time once per run (and once per
learning rate in a sweep) before the first step. This times, for every
method and the optax construction that computes the same step, the
``jax.jit(...).lower`` and ``.compile`` of one ``update + apply_updates`` on
trees of alternating ``(16, 16)`` kernels and ``(16,)`` biases with 100, 1000
(and 3000) leaves, one run each, and reports each method's total as a
multiple of its optax equivalent's.

    python -m benchmarks.speed.compile_time                  # 100 and 1000 leaves
    python -m benchmarks.speed.compile_time --leaves 100 1000 3000 --json o.json
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks.speed.step_speed import BETA, LR, candidates
from benchmarks.speed.timing import finish

# The methods timed and the optax construction each is compared with.
METHODS = ("optax.sgd(momentum)", "optax sngm chain", "sngm", "block_sngm",
           "nigt", "optax.lars", "lars", "clars", "optax.lamb", "lamb",
           "optax.signum", "signum", "optax.contrib.muon", "muon", "normuon",
           "scion")


def tree(leaves: int) -> dict:
  shapes = [(16, 16), (16,)] * (leaves // 2)
  return {f"p{i:05d}": jnp.ones(s, jnp.float32) for i, s in enumerate(shapes)}


def compile_seconds(tx, extra, params) -> tuple[float, float]:
  """Seconds to lower and to compile one jitted update + apply_updates."""
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  start = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
  lowered_at = time.perf_counter()
  lowered.compile()
  return lowered_at - start, time.perf_counter() - lowered_at


def measure(leaves: int, only=None) -> list[dict]:
  params = tree(leaves)
  pool = candidates(params)
  rows = []
  for name in METHODS:
    if only and name not in only:
      continue
    tx, ref, _, extra = pool[name]
    lower, comp = compile_seconds(tx, extra, params)
    rows.append({"leaves": leaves, "method": name, "lower_s": lower,
                 "compile_s": comp, "total_s": lower + comp,
                 "optax_equivalent": ref})
    print(f"  {leaves} leaves  {name:22s} lower {lower:6.2f} s  "
          f"compile {comp:6.2f} s", flush=True)
  totals = {r["method"]: r["total_s"] for r in rows}
  for r in rows:
    ref = r["optax_equivalent"]
    r["vs_optax"] = r["total_s"] / totals[ref] if ref in totals else None
  return rows


def table(rows) -> str:
  leaves = sorted({r["leaves"] for r in rows})
  head = "| method | " + " | ".join(f"{n} leaves: s (× optax)" for n in leaves)
  lines = [head + " |", "|---" * (len(leaves) + 1) + "|"]
  for name in dict.fromkeys(r["method"] for r in rows):
    cells = []
    for n in leaves:
      r = next((r for r in rows if r["method"] == name and r["leaves"] == n),
               None)
      if r is None:
        cells.append("")
        continue
      vs = f" ({r['vs_optax']:.2f}× {r['optax_equivalent']})" if r[
          "vs_optax"] is not None else ""
      cells.append(f"{r['total_s']:.2f}{vs}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--leaves", type=int, nargs="+", default=[100, 1000])
  parser.add_argument("--only", nargs="*", default=None,
                      help="time only these methods")
  parser.add_argument("--json", default=None, help="write the rows here")
  args = parser.parse_args(argv)
  rows = []
  for n in args.leaves:
    rows += measure(n, args.only)
  print(table(rows))
  finish(rows, args.json, f"optax {optax.__version__}, lr {LR}, beta {BETA}, "
         "one run per cell")


if __name__ == "__main__":
  main()
