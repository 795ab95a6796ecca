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
        out: Path, *, objective: sweep.Objective = sweep.ACCURACY,
        metric_fn=None, derive=None, title: str = "MNIST-1D",
        curve: str = "train_loss", progress: bool = False, **config) -> list[dict]:
  """The protocol over ``variants_`` x ``batch_sizes``; ``config`` holds
  :class:`benchmarks.train.Config` fields shared by every run (data set,
  model, epochs, num_samples, validation, train_subset). ``objective``
  says what to select on and report; ``metric_fn`` goes to
  :func:`benchmarks.train.train_population` and ``derive(record)`` adds
  fields to every record (both for the other workloads' metrics);
  ``curves.png`` plots the history's ``curve`` at the chosen learning
  rates; ``progress`` shows a bar per grid. Writes the results to
  ``out`` (``results.json``, ``summary.json``, ``<metric>_vs_batch.png``,
  ``curves.png``) and returns the summaries."""
  def train_fn(*, learning_rates, seeds, **fields):
    records = train.train_population(train.Config(**config, **fields),
                                     learning_rates, seeds, progress,
                                     metric_fn=metric_fn)
    return [r | derive(r) for r in records] if derive else records

  summaries = sweep.study(variants_, batch_sizes, protocol_, train_fn,
                          objective=objective)
  out.mkdir(parents=True, exist_ok=True)
  report.write_records([r for s in summaries for r in s["runs"]], out)
  (out / "summary.json").write_text(json.dumps(
      {"protocol": vars(protocol_) | {"seeds": list(protocol_.seeds)},
       "config": config, "provenance": report.provenance(),
       "summaries": [{k: v for k, v in s.items() if k != "runs"}
                     for s in summaries]}, indent=2))
  metric = objective.report.removeprefix("test_")
  report.plot_study(summaries, out / f"{metric}_vs_batch.png", title,
                    objective)
  report.plot_curves(summaries, out / "curves.png",
                     f"{curve.replace('_', ' ')} at the chosen learning "
                     "rates", curve)
  return summaries


def parse_study(argv, description: str, full_help: str, out: str | None,
                overrides: dict[str, tuple[type, str]], **extra):
  """The flags every study shares (``--full``, ``--methods``,
  ``--batch_sizes``, ``--out``), ``overrides`` (name -> (type, help)) of
  shared config fields, and ``extra`` (name -> ``add_argument`` keywords).

  Returns:
    ``(args, overrides given)``.
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--full", action="store_true", help=full_help)
  parser.add_argument("--methods", nargs="+", default=None,
                      help="only these methods' variants")
  parser.add_argument("--batch_sizes", nargs="+", type=int, default=None)
  for name, keywords in extra.items():
    parser.add_argument(f"--{name}", **keywords)
  for name, (kind, help_) in overrides.items():
    parser.add_argument(f"--{name}", type=kind, default=None, help=help_)
  parser.add_argument("--out", default=out,
                      help=f"default: {out or 'runs/<config>'}")
  args = parser.parse_args(argv)
  return args, {k: getattr(args, k) for k in overrides
                if getattr(args, k) is not None}


def finished(runs: int, start: float, out: Path) -> str:
  """The benchmarks' last printed line."""
  return (f"{runs} runs in {time.perf_counter() - start:.0f}s on "
          f"{report.machine_line()}; results in {out}/results.json")


def main(argv=None) -> None:
  args, overrides = parse_study(
      argv, __doc__.splitlines()[0], "5-point grids, 3 seeds, every variant",
      None, {"epochs": (int, None),
             "num_samples": (int, "MNIST-1D samples to generate (80%% train)"),
             "validation": (int, "training examples held out to select on"),
             "train_subset": (int, "train on the first N examples only "
                              "(smoke runs)")},
      config={"default": "large_batch",
              "help": "a study in benchmarks/configs/ (default: the main "
              "command's)"})
  config = configs.load(args.config)
  shared = config["train"] | overrides
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
  print(f"\n{finished(runs, start, out)}, summary.json, "
        "accuracy_vs_batch.png, curves.png")


if __name__ == "__main__":
  main()
