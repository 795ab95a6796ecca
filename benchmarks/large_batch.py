"""The README's main command: small vs large batch on MNIST-1D.

Trains MSGD (best of a learning-rate grid), LARS and SNGM (each also the best
of a small grid) at batch 128 and 4096 with equal epochs, cosine learning
rate, weight decay 1e-4 and no warmup (the analogue of the SNGM paper's
Table 2), prints a table, and writes ``results.json`` (one record per run)
and ``accuracy_vs_batch.png`` to ``--out``.

    python -m benchmarks.large_batch                 # ~3-4 minutes on 2 cores
    python -m benchmarks.large_batch --batch_sizes 128 1024 4096 8192
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import configs, report, train

CONFIG = configs.load("large_batch")
# Learning-rate grids per method, keyed by batch size ("large" for > 1024).
GRIDS = CONFIG["grids"]


def run(methods, batch_sizes, epochs, seeds, out: Path, train_subset=None,
        num_samples=50_000, grids=None, progress=True) -> list[dict]:
  """Every (batch, method, learning rate of its grid, seed); one record
  each (with the per-epoch history), also written to ``out``."""
  grids = GRIDS if grids is None else grids
  records = []
  for batch in batch_sizes:
    for method in methods:
      grid = grids[method]["small" if batch <= 1024 else "large"]
      for lr in grid:
        for seed in seeds:
          config = train.Config(method=method, batch_size=batch,
                                learning_rate=lr, epochs=epochs, seed=seed,
                                trust_coefficient=CONFIG["trust_coefficient"],
                                train_subset=train_subset,
                                num_samples=num_samples)
          result = train.train_and_evaluate(config, progress=progress)
          record = {k: result[k] for k in (
              "method", "batch_size", "learning_rate", "seed",
              "test_accuracy", "final_train_loss", "seconds", "epochs",
              "history")}
          records.append(record)
          print(f"  {method:6s} b={batch:5d} lr={lr:<5g} seed={seed} "
                f"acc={record['test_accuracy']:.4f} "
                f"({record['seconds']:.1f}s)", flush=True)
  report.write_records(records, out)
  report.plot_accuracy_vs_batch(records, out / "accuracy_vs_batch.png")
  return records


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", nargs="+", default=CONFIG["methods"],
                      choices=sorted(GRIDS))
  parser.add_argument("--batch_sizes", nargs="+", type=int,
                      default=CONFIG["batch_sizes"])
  parser.add_argument("--epochs", type=int, default=CONFIG["epochs"])
  parser.add_argument("--seeds", nargs="+", type=int, default=CONFIG["seeds"])
  parser.add_argument("--train_subset", type=int, default=None,
                      help="train on the first N examples only (smoke runs)")
  parser.add_argument("--num_samples", type=int,
                      default=CONFIG["num_samples"],
                      help="MNIST-1D samples to generate (80%% train)")
  parser.add_argument("--out", default="runs/large_batch")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  records = run(args.methods, args.batch_sizes, args.epochs, args.seeds,
                Path(args.out), args.train_subset, args.num_samples)
  print()
  print(report.accuracy_table(records))
  machine = report.provenance()
  print(f"\n{len(records)} runs in {time.perf_counter() - start:.0f}s on "
        f"{machine['machine']} ({machine['device']}, jax {machine['jax']}); "
        "results in "
        f"{args.out}/results.json, plot in {args.out}/accuracy_vs_batch.png")


if __name__ == "__main__":
  main()
