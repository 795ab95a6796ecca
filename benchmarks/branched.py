"""The local critical batch, measured by branched runs, and the batch warmup
built from it.

Merrill, Arora, Groeneveld and Hajishirzi (*Critical Batch Size Revisited:
A Simple Empirical Approach to Large-Batch Language Model Training*, arXiv
2505.23971) measure the critical batch directly instead of through the
gradient noise scale: from a checkpoint of a run at batch ``B_0``, branch
short runs at batches ``k B_0`` (the learning rate scaled with ``k``),
train each on the same number of examples, and call the largest batch
whose loss is still within a tolerance of the small batch's the *local*
critical batch at that point. They find it near zero at initialization,
rising fast, then flat, and train OLMo 1B with a batch warmup that follows
it (43% fewer optimizer steps at equal loss).

Here, per method, on MNIST-1D with the 1-D CNN:

1. A base run at batch ``B_0`` with its tuned constant learning rate ``η``
   (seeds in one :func:`benchmarks.train.train_population` program) keeps
   its state at the start of every epoch, and the two noise-scale
   estimators there (``B_simple = tr(Σ) / ‖G‖²``, McCandlish et al.; at
   epoch 0, after the first step).
2. From each saved state, a branch per multiplier ``k`` trains one epoch at
   batch ``k B_0`` and learning rate ``η k^γ`` (``γ``:
   :func:`benchmarks.train.batch_exponent`, 1 for momentum SGD, 1/2 for
   the normalized methods) on the same examples in the same order; its
   validation loss (mean cross-entropy on held-out examples) is recorded.
   Branches at one batch size run as one program over every (epoch, seed).
3. The local critical batch of epoch ``e`` is the largest ``k B_0`` whose
   seed-mean validation loss is at most ``(1 + ε)`` times the ``k = 1``
   branch's (:func:`critical_batches`).
4. The warmup (:func:`warmup_batches`): epoch ``e`` trains at the largest
   power-of-two multiple of ``B_0`` not above that epoch's local critical
   batch, never falling, up to ``max(k) B_0``; the learning rate follows
   ``(b / B_0)^γ`` as in the branches (``train.Config.epoch_batches``).

A window is one epoch because the warmup changes the batch once an epoch;
epochs at batch ``k B_0`` drop the remainder of the training examples, so a
large-batch branch sees up to ``k B_0 - 1`` fewer examples (2% at 1024 of
45,000), which can only lower its critical batch.

    python -m benchmarks.branched                 # 1 seed, SNGM
    python -m benchmarks.branched --full          # 3 seeds, msgd sngm lars muon

Writes ``local.json`` (per method: the losses of every branch, the local
critical batches at each tolerance, ``B_simple``, the warmup, provenance),
``local.md`` and ``local.png`` to ``--out``; the growth study
(``python -m benchmarks.critical_batch --only growth --schemes
"critical-batch warmup" --local DIR/local.json``) trains the warmup.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import configs, report, train

CONFIG = configs.load("critical_batch")


def critical_batches(losses: np.ndarray, batches: Sequence[int],
                     tolerance: float) -> list[int]:
  """Per time, the largest batch whose loss is at most ``(1 + tolerance)``
  times the first batch's.

  Args:
    losses: ``(times, batches)`` seed-mean losses; column 0 is the base
      batch's branch.
    batches: the branches' batch sizes, ascending, ``batches[0]`` the base.
    tolerance: ``ε``, a relative loss increase.

  Returns:
    One batch size per time (a non-finite loss never qualifies).
  """
  losses = np.asarray(losses, float)
  within = np.isfinite(losses) & (losses <= (1 + tolerance) * losses[:, :1])
  return [int(max(b for b, ok in zip(batches, row) if ok) if row.any()
              else batches[0]) for row in within]


def warmup_batches(critical: Sequence[float], base: int,
                   max_batch: int) -> list[int]:
  """Per epoch, the largest ``base · 2^j`` at most the local critical batch
  (at least ``base``, at most ``max_batch``), never below an earlier
  epoch's."""
  batches, current = [], base
  for c in critical:
    fits = base * 2 ** math.floor(math.log2(max(c, base) / base))
    current = max(current, min(fits, max_batch))
    batches.append(current)
  return batches


def measure(method: str, learning_rate: float, seeds: Sequence[int],
            multipliers: Sequence[int], *, base_batch: int, epochs: int,
            **config) -> dict:
  """Steps 1 and 2 for one method; ``config`` holds the shared
  :class:`benchmarks.train.Config` fields (with validation examples).

  Returns:
    ``batches`` (the branches'), ``losses`` (``[time][batch][seed]``
    validation losses), ``trace`` and ``grad_sq`` (``[time][seed]``, the
    noise-scale estimators at each branch point), ``seconds``.
  """
  start = time.perf_counter()
  fields = config | {"method": method, "schedule": "constant"}
  base = train.Config(**fields, batch_size=base_batch, epochs=epochs - 1)
  passes = train.make_plan(base, train.training_examples(base)).steps
  snapshots = []
  records = train.train_population(
      base, [learning_rate], seeds,
      eval_at=[1] + [e * passes for e in range(1, epochs)],
      on_epoch=lambda e, *state: snapshots.append(state))
  starts = jax.tree.map(lambda *xs: jnp.concatenate(xs), *snapshots)
  exponent = train.batch_exponent(method)
  batches = [k * base_batch for k in multipliers]
  losses = np.empty((epochs, len(batches), len(seeds)))
  for j, k in enumerate(multipliers):
    branch = train.Config(**fields, batch_size=k * base_batch, epochs=1)
    runs = train.train_population(
        branch, [learning_rate * k ** exponent] * epochs, seeds,
        start=starts)
    losses[:, j] = np.reshape([r["validation_loss"] for r in runs],
                              (epochs, len(seeds)))
  trace, grad_sq = (np.array([[c[key] for c in r["checkpoints"]]
                              for r in records]).T for key in
                    ("trace", "grad_sq"))
  return {"method": method, "learning_rate": learning_rate,
          "base_batch": base_batch, "batches": batches,
          "seeds": list(seeds), "epochs": epochs,
          "losses": losses.tolist(), "trace": trace.tolist(),
          "grad_sq": grad_sq.tolist(),
          "seconds": time.perf_counter() - start}


def summarize(measured: dict, tolerances: Sequence[float], tolerance: float,
              max_batch: int) -> dict:
  """Steps 3 and 4: the local critical batch at each tolerance, ``B_simple``
  per epoch (the seeds' estimators summed before the ratio) and the warmup
  at ``tolerance``."""
  mean = np.mean(measured["losses"], axis=2)
  critical = {str(eps): critical_batches(mean, measured["batches"], eps)
              for eps in tolerances}
  chosen = critical_batches(mean, measured["batches"], tolerance)
  b_simple = (np.sum(measured["trace"], axis=1)
              / np.sum(measured["grad_sq"], axis=1))
  return measured | {
      "critical": critical, "tolerance": tolerance,
      "local_critical_batch": chosen, "b_simple": b_simple.tolist(),
      "warmup": warmup_batches(chosen, measured["base_batch"], max_batch)}


def run(methods: Sequence[str], seeds: Sequence[int], out: Path,
        settings: dict, **config) -> list[dict]:
  """:func:`measure` and :func:`summarize` for every method with
  ``settings`` (the config's ``local`` section); writes ``local.json``,
  ``local.md`` and ``local.png`` to ``out``."""
  results = []
  for method in methods:
    measured = measure(method, settings["learning_rates"][method], seeds,
                       settings["multipliers"],
                       base_batch=settings["base_batch"],
                       epochs=settings["epochs"], **config)
    results.append(summarize(
        measured, settings["tolerances"], settings["tolerance"],
        settings["base_batch"] * max(settings["multipliers"])))
    print(f"  {method}: local critical batch by epoch "
          f"{results[-1]['local_critical_batch']}, B_simple "
          f"{[round(b) for b in results[-1]['b_simple']]}, warmup "
          f"{results[-1]['warmup']} ({measured['seconds']:.0f}s)")
  out.mkdir(parents=True, exist_ok=True)
  (out / "local.json").write_text(json.dumps({
      "settings": settings, "config": config,
      "provenance": report.provenance(), "methods": results}, indent=2))
  (out / "local.md").write_text(table(results) + "\n\n"
                                + report.command_note("benchmarks.branched")
                                + "\n")
  plot(results, out / "local.png")
  return results


def table(results: Sequence[dict]) -> str:
  """Markdown: per method and epoch, the local critical batch at each
  tolerance, ``B_simple`` and the warmup's batch."""
  tolerances = list(results[0]["critical"])
  lines = ["| method | epoch | " + " | ".join(
      f"local critical batch, ε = {eps}" for eps in tolerances)
           + " | B_simple | warmup batch |",
           "|---" * (len(tolerances) + 4) + "|"]
  for r in results:
    for e in range(r["epochs"]):
      lines.append(f"| {r['method']} | {e} | " + " | ".join(
          str(r["critical"][eps][e]) for eps in tolerances)
                   + f" | {r['b_simple'][e]:.0f} | {r['warmup'][e]} |")
  return "\n".join(lines)


def plot(results: Sequence[dict], path: Path) -> None:
  """Per method, the local critical batch (each tolerance; a later line
  hides an equal earlier one) and ``B_simple`` against the epoch, with the
  largest branch's batch (a critical batch there means "at least")."""
  plt = report._pyplot()
  fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.5),
                           squeeze=False)
  for ax, r in zip(axes[0], results):
    epochs = np.arange(r["epochs"])
    for i, (eps, batches) in enumerate(r["critical"].items()):
      ax.step(epochs, batches, where="post", color=f"C{i}",
              label=f"local critical, ε={eps}")
    ax.plot(epochs, r["b_simple"], "k:o", label="B_simple")
    ax.axhline(max(r["batches"]), color="gray", ls="--", lw=1,
               label="largest branch")
    ax.set(yscale="log", xlabel="epoch (branch point)", ylabel="batch",
           title=f"{r['method']} (base batch {r['base_batch']})")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--full", action="store_true",
                      help="3 seeds, every method of the growth study")
  parser.add_argument("--methods", nargs="+", default=None)
  parser.add_argument("--train_subset", type=int, default=None,
                      help="train on the first N examples only (smoke runs)")
  parser.add_argument("--out", default="runs/branched")
  args = parser.parse_args(argv)
  settings = CONFIG["local"]
  sizes = CONFIG["full" if args.full else "quick"]
  methods = args.methods or (settings["methods"] if args.full else ["sngm"])
  shared = CONFIG["train"] | ({} if args.train_subset is None
                              else {"train_subset": args.train_subset})
  start = time.perf_counter()
  results = run(methods, sizes["seeds"], Path(args.out), settings, **shared)
  print()
  print(table(results))
  print(f"\n{len(results)} methods in {time.perf_counter() - start:.0f}s on "
        f"{report.machine_line()}; results in {args.out}/")


if __name__ == "__main__":
  main()
