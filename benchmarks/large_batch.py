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
import json
import platform
import time
from pathlib import Path

from benchmarks import train

# Learning-rate grids per method, keyed by batch size ("large" for > 1024).
GRIDS = {
    "msgd": {"small": [0.1, 0.2], "large": [0.1, 0.2, 0.3]},
    "lars": {"small": [2.0, 5.0], "large": [2.0, 5.0]},
    "sngm": {"small": [0.2, 0.4], "large": [0.6, 0.8]},
    "clars": {"small": [5.0, 10.0], "large": [10.0, 15.0]},
}


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
                                trust_coefficient=0.001,
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
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(records, indent=2))
  plot(records, out / "accuracy_vs_batch.png")
  return records


def best_per_method(records) -> dict:
  """(method, batch) -> the best learning rate's record (mean over seeds)."""
  by_key: dict = {}
  for r in records:
    by_key.setdefault((r["method"], r["batch_size"], r["learning_rate"]),
                      []).append(r)
  best: dict = {}
  for (method, batch, lr), runs in by_key.items():
    mean = sum(r["test_accuracy"] for r in runs) / len(runs)
    secs = sum(r["seconds"] for r in runs) / len(runs)
    if (method, batch) not in best or mean > best[(method, batch)][0]:
      best[(method, batch)] = (mean, lr, secs)
  return best


def table(records) -> str:
  best = best_per_method(records)
  batches = sorted({b for _, b in best})
  methods = list(dict.fromkeys(m for m, _ in best))
  lines = ["| method | " + " | ".join(f"batch {b}" for b in batches) + " |",
           "|---" * (len(batches) + 1) + "|"]
  for m in methods:
    cells = []
    for b in batches:
      acc, lr, secs = best[(m, b)]
      cells.append(f"{100 * acc:.2f}% (lr {lr:g}, {secs:.0f}s)")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(records, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  best = best_per_method(records)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for method in dict.fromkeys(m for m, _ in best):
    batches = sorted(b for m, b in best if m == method)
    ax.plot(batches, [100 * best[(method, b)][0] for b in batches], "o-",
            label=method)
  ax.set(xscale="log", xlabel="batch size", ylabel="test accuracy (%)",
         title="MNIST-1D, equal epochs, best lr of grid")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", nargs="+", default=["msgd", "lars", "sngm"],
                      choices=sorted(GRIDS))
  parser.add_argument("--batch_sizes", nargs="+", type=int, default=[128, 4096])
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--seeds", nargs="+", type=int, default=[0])
  parser.add_argument("--train_subset", type=int, default=None,
                      help="train on the first N examples only (smoke runs)")
  parser.add_argument("--num_samples", type=int, default=50_000,
                      help="MNIST-1D samples to generate (80%% train)")
  parser.add_argument("--out", default="runs/large_batch")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  records = run(args.methods, args.batch_sizes, args.epochs, args.seeds,
                Path(args.out), args.train_subset, args.num_samples)
  print()
  print(table(records))
  print(f"\n{len(records)} runs in {time.perf_counter() - start:.0f}s on "
        f"{platform.machine()} ({platform.processor() or 'cpu'}); results in "
        f"{args.out}/results.json, plot in {args.out}/accuracy_vs_batch.png")


if __name__ == "__main__":
  main()
