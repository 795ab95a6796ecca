"""Records, tables and figures: everything the benchmarks write or print."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import jax

from benchmarks import sweep


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


def machine_line() -> str:
  """The machine and versions, as the benchmarks' last printed line names
  them."""
  m = provenance()
  return f"{m['machine']} ({m['device']}, jax {m['jax']}, optax {m['optax']})"


def command_note(module: str) -> str:
  """Which command, when, on what: the line under every written table
  (``python -m <module>`` with this process's arguments, shell-quoted)."""
  import datetime
  import shlex
  import sys
  m = provenance()
  command = shlex.join(["python", "-m", module, *sys.argv[1:]])
  return (f"Made by `{command}` on {datetime.date.today()}, {m['machine']} "
          f"({m['device']}), jax {m['jax']}, optax {m['optax']}, normopt "
          f"{m['normopt']}.")


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


def plot_study(summaries, path: Path, title: str = "MNIST-1D",
               objective: sweep.Objective = sweep.ACCURACY) -> None:
  """Two panels from ``benchmarks.sweep`` summaries: the reported value
  (default test accuracy; seed mean ± std at the tuned learning rate)
  against batch size for each method's best variant, and, at the largest
  batch, the seed-mean validation value of every variant over the whole
  grid it was tuned on (how sensitive each is to its learning rate)."""
  scale = objective.scale
  unit = " (%)" if objective.suffix == "%" else ""
  plt = _pyplot()
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
  best = sweep.best_variants(summaries)
  for method in dict.fromkeys(s["method"] for s in best):
    rows = sorted((s for s in best if s["method"] == method),
                  key=lambda s: s["batch_size"])
    a.errorbar([s["batch_size"] for s in rows],
               [scale * s["mean"] for s in rows],
               yerr=[scale * s["std"] for s in rows], fmt="o-", capsize=3,
               label=method)
  batches = sorted({s["batch_size"] for s in summaries})
  a.set(xscale="log", xlabel="batch size",
        ylabel=objective.report.replace("_", " ") + unit,
        title=f"{title}: tuned learning rate, " + (
            "mean ± std" if max(len({r["seed"] for r in s["runs"]})
                                for s in best) > 1 else "one seed"))
  a.set_xticks(batches, [str(b) for b in batches])
  a.minorticks_off()
  a.legend()
  largest = max(s["batch_size"] for s in summaries)
  for s in summaries:
    if s["batch_size"] != largest:
      continue
    by_lr: dict = {}
    for r in s["runs"]:
      by_lr.setdefault(r["learning_rate"], []).append(r)
    lrs = sorted(by_lr)
    b.plot(lrs, [scale * sweep.seed_mean(by_lr[lr], objective.validation)
                 for lr in lrs], "o-", label=s["label"])
  b.set(xscale="log", xlabel="peak learning rate",
        ylabel=objective.validation.replace("_", " ") + unit,
        title=f"every grid point at batch {largest}")
  b.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_curves(summaries, path: Path, title: str,
                key: str = "train_loss") -> None:
  """``key`` of the history (default the training loss) per epoch at each
  summary's chosen learning rate (every seed, one colour per row of the
  table)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for i, s in enumerate(summaries):
    for j, r in enumerate(sweep.chosen_runs(s)):
      ax.plot([h["epoch"] for h in r["history"]],
              [h[key] for h in r["history"]], color=f"C{i % 10}",
              alpha=0.8, label=None if j else
              f"{s['label']} b={s['batch_size']} lr {s['learning_rate']:g}")
  ax.set(xlabel="epoch", ylabel=key.replace("_", " "), yscale="log",
         title=title)
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_unit_balls(path: Path) -> None:
  """The figure of the steepest-descent family (docs/primitives.md): for a
  gradient g, the unit ball of each norm and the point of it farthest
  along g (the LMO's answer; the step is minus it). The spectral panel is
  drawn in the singular-value coordinates of a 2x2 matrix."""
  import numpy as np
  plt = _pyplot()
  g = np.array([1.0, 0.35])
  panels = [
      ("ℓ2: sngm, block_sngm", "circle", g / np.linalg.norm(g)),
      ("ℓ∞: signum (norm='sign')", "square", np.sign(g)),
      ("spectral: muon (norm='spectral')\nsingular values σ1, σ2", "square",
       np.ones(2))]
  fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
  theta = np.linspace(0, 2 * np.pi, 200)
  for ax, (title, ball, answer) in zip(axes, panels, strict=True):
    if ball == "circle":
      ax.plot(np.cos(theta), np.sin(theta), "k-")
    else:
      ax.plot([-1, 1, 1, -1, -1], [-1, -1, 1, 1, -1], "k-")
    ax.annotate("", g, (0, 0), arrowprops={"arrowstyle": "->",
                                           "color": "C0"})
    ax.annotate("", answer, (0, 0), arrowprops={"arrowstyle": "->",
                                                "color": "C3", "lw": 2})
    ax.text(g[0] + 0.05, g[1] - 0.2, "g", color="C0")
    ax.text(answer[0] + 0.05, answer[1] + 0.08, "LMO", color="C3")
    ax.set(xlim=(-1.4, 1.4), ylim=(-1.4, 1.4), aspect="equal", title=title)
    ax.axhline(0, color="0.85", lw=0.5)
    ax.axvline(0, color="0.85", lw=0.5)
  fig.suptitle("unit ball of each norm and argmax of <g, Δ> over it "
               "(the step is −lr times it)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
