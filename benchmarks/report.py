"""Records, tables and figures: everything the benchmarks write or print."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import jax


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def provenance() -> dict:
  """Machine and versions, stored beside every set of results."""
  import optax

  import normopt
  return {"machine": platform.machine(),
          "processor": platform.processor() or "cpu",
          "device": jax.devices()[0].device_kind, "jax": jax.__version__,
          "optax": optax.__version__, "normopt": normopt.__version__}


def write_records(records: list[dict], out: Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(records, indent=2))


def write_metrics(result: dict, workdir: Path) -> None:
  """One training run: ``metrics.json``, ``metrics.csv`` and ``curves.png``."""
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "metrics.json").write_text(json.dumps(result, indent=2))
  with open(workdir / "metrics.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, ["epoch", "train_loss", "test_accuracy",
                                "grad_norm"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result["history"])
  plt = _pyplot()
  history = result["history"]
  noise = [h.get("telemetry", {}).get("noise_scale_0/simple")
           for h in history]
  panels = 3 if all(n is not None for n in noise) else 2
  fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.5))
  epochs = [h["epoch"] for h in history]
  axes[0].plot(epochs, [h["train_loss"] for h in history])
  axes[0].set(xlabel="epoch", ylabel="train loss", yscale="log")
  axes[1].plot(epochs, [h["test_accuracy"] for h in history])
  axes[1].set(xlabel="epoch", ylabel="test accuracy")
  if panels == 3:
    axes[2].plot(epochs, noise, label="global")
    axes[2].axhline(result["batch_size"], color="gray", ls="--", label="batch")
    axes[2].set(xlabel="epoch", ylabel="noise scale B_simple", yscale="log")
    axes[2].legend()
  fig.suptitle(f"{result['method']} batch {result['batch_size']} "
               f"lr {result['learning_rate']}")
  fig.tight_layout()
  fig.savefig(workdir / "curves.png", dpi=100)
  plt.close(fig)


def best_per_method(records) -> dict:
  """(method, batch) -> (mean accuracy, learning rate, mean seconds) of the
  learning rate with the best mean test accuracy over seeds."""
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


def accuracy_table(records) -> str:
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


def plot_accuracy_vs_batch(records, path: Path) -> None:
  plt = _pyplot()
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


def settings_table(records) -> str:
  lines = ["| setting | test accuracy | final train loss | seconds |",
           "|---|---|---|---|"]
  for r in records:
    lines.append(f"| {r['setting']} | {100 * r['test_accuracy']:.2f}% | "
                 f"{r['final_train_loss']:.4f} | {r['seconds']:.0f} |")
  return "\n".join(lines)


def plot_curves(records, path: Path, title: str) -> None:
  """Training loss and test accuracy per epoch, one line per setting."""
  plt = _pyplot()
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
  for r in records:
    epochs = [h["epoch"] for h in r["history"]]
    a.plot(epochs, [h["train_loss"] for h in r["history"]], label=r["setting"])
    b.plot(epochs, [100 * h["test_accuracy"] for h in r["history"]])
  a.set(xlabel="epoch", ylabel="train loss", yscale="log")
  b.set(xlabel="epoch", ylabel="test accuracy (%)")
  a.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
