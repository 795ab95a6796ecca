"""The README's main command: small vs large batch on MNIST-1D, fairly tuned.

Momentum SGD, LARS and SNGM (``--full``: also LARS's and CLARS's mask and
trust-coefficient variants) at batch 128 and 4096 with equal epochs, cosine
learning rate, weight decay 1e-4 and no warmup (the analogue of the SNGM
paper's Table 2), every one tuned by the same protocol
(:mod:`benchmarks.sweep`: equal log-spaced grids widened until the best
learning rate is inside, selection on held-out validation accuracy). Prints
the table, and writes ``results.json`` (one record per run),
``summary.json`` (one per variant and batch size), ``accuracy_vs_batch.png``
and ``curves.png`` (training loss at the chosen learning rates) to
``--out``.

    python -m benchmarks.large_batch            # 3-point grids, 1 seed: ~4 min
    python -m benchmarks.large_batch --full     # 5-point grids, 3 seeds, all
                                                # variants (README's table)
    python -m benchmarks.large_batch --config lars_mask --full

``--config NAME`` runs another study of the same shape from
``benchmarks/configs/NAME.json`` (another model, data set or set of
variants).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import configs, report, sweep, train

CONFIG = configs.load("large_batch")


def protocol(full: bool, config: dict = CONFIG) -> sweep.Protocol:
  sizes = config["full" if full else "quick"]
  return sweep.Protocol(grid_size=sizes["grid_size"], ratio=config["ratio"],
                        max_widen=sizes["max_widen"],
                        seeds=tuple(sizes["seeds"]))


def variants(full: bool, methods=None, config: dict = CONFIG) -> list[dict]:
  chosen = [v for v in config["variants"] if full or v.get("quick")]
  if methods:
    chosen = [v for v in chosen if v["method"] in methods]
  return chosen


def run(variants_: list[dict], batch_sizes, protocol_: sweep.Protocol,
        out: Path, **config) -> list[dict]:
  """The protocol over ``variants_`` x ``batch_sizes``; ``config`` holds
  :class:`benchmarks.train.Config` fields shared by every run (epochs,
  num_samples, validation, train_subset). Writes the results to ``out``
  and returns the summaries."""
  def train_fn(*, learning_rates, seeds, **fields):
    return train.train_population(train.Config(**config, **fields),
                                  learning_rates, seeds)

  summaries = sweep.study(variants_, batch_sizes, protocol_, train_fn)
  out.mkdir(parents=True, exist_ok=True)
  report.write_records([r for s in summaries for r in s["runs"]], out)
  (out / "summary.json").write_text(json.dumps(
      {"protocol": vars(protocol_) | {"seeds": list(protocol_.seeds)},
       "config": config, "provenance": report.provenance(),
       "summaries": [{k: v for k, v in s.items() if k != "runs"}
                     for s in summaries]}, indent=2))
  report.plot_study(summaries, out / "accuracy_vs_batch.png")
  report.plot_curves(summaries, out / "curves.png",
                     "training loss at the chosen learning rates")
  return summaries


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="large_batch",
                      help="a study in benchmarks/configs/ (default: the "
                      "main command's)")
  parser.add_argument("--full", action="store_true",
                      help="5-point grids, 3 seeds, every variant")
  parser.add_argument("--methods", nargs="+", default=None,
                      help="only these methods' variants")
  parser.add_argument("--batch_sizes", nargs="+", type=int, default=None)
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--num_samples", type=int, default=None,
                      help="MNIST-1D samples to generate (80%% train)")
  parser.add_argument("--validation", type=int, default=None,
                      help="training examples held out to select on")
  parser.add_argument("--train_subset", type=int, default=None,
                      help="train on the first N examples only (smoke runs)")
  parser.add_argument("--out", default=None,
                      help="default: runs/<config>")
  args = parser.parse_args(argv)
  config = configs.load(args.config)
  shared = config["train"] | {
      k: getattr(args, k) for k in ("epochs", "num_samples", "validation",
                                    "train_subset")
      if getattr(args, k) is not None}
  out = Path(args.out or f"runs/{args.config}")
  start = time.perf_counter()
  summaries = run(variants(args.full, args.methods, config),
                  args.batch_sizes or config["batch_sizes"],
                  protocol(args.full, config), out, **shared)
  print()
  print(sweep.table(summaries))
  if len({s["label"] for s in summaries}) > len(
      {s["method"] for s in summaries}):
    print()
    print(sweep.table(summaries, rows="label"))
  runs = sum(len(s["runs"]) for s in summaries)
  print(f"\n{runs} runs in {time.perf_counter() - start:.0f}s on "
        f"{report.machine_line()}; results in {out}/results.json, "
        f"summary.json, accuracy_vs_batch.png, curves.png")


if __name__ == "__main__":
  main()
