"""Increasing batch size vs decaying learning rate with mini-batch QHM.

The QHM paper (Kamo & Iiduka, Sec. 5) trains with the batch doubling every
E epochs and a constant learning rate, and finds it beats a fixed batch with
a decaying learning rate at an equal epoch budget. This runs the analogue on
MNIST-1D with the 1-D CNN: QHM (β = 0.9, ν = 0.7), M epochs, the batch
``b_0 · 2^⌊m/E⌋`` capped at ``b_max`` realised by accumulating micro-batches of
``b_0`` (``optax.MultiSteps`` driven by ``normopt.schedules``), against a fixed
batch ``b_0`` with constant, cosine and 1/√(m+1) learning rates and a fixed
batch ``b_max`` with a constant one. Prints a table, writes ``results.json``
and ``curves.png`` to ``--out``.

    python -m benchmarks.increasing_batch            # ~4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import configs, report, train

CONFIG = configs.load("increasing_batch")


def settings(b0: int, b_max: int, interval: int, lr: float) -> dict:
  growth = dict(micro_batch=b0, batch_growth=2.0, growth_interval=interval,
                max_batch=b_max)
  return {
      f"increasing batch {b0}->{b_max}, constant lr": dict(
          batch_size=b0, schedule="constant", learning_rate=lr, **growth),
      f"batch {b0}, constant lr": dict(batch_size=b0, schedule="constant",
                                       learning_rate=lr),
      f"batch {b0}, cosine lr": dict(batch_size=b0, schedule="cosine",
                                     learning_rate=lr),
      f"batch {b0}, 1/sqrt(m+1) lr": dict(batch_size=b0, schedule="sqrt_decay",
                                          learning_rate=lr),
      f"batch {b_max}, constant lr": dict(batch_size=b_max,
                                          schedule="constant",
                                          learning_rate=lr),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for flag in ("epochs", "interval", "b0", "b_max", "seed", "num_samples"):
    parser.add_argument(f"--{flag}", type=int, default=CONFIG[flag])
  parser.add_argument("--learning_rate", type=float,
                      default=CONFIG["learning_rate"])
  parser.add_argument("--out", default="runs/increasing_batch")
  args = parser.parse_args(argv)
  out = Path(args.out)
  records = []
  start = time.perf_counter()
  for label, overrides in settings(args.b0, args.b_max, args.interval,
                                   args.learning_rate).items():
    config = train.Config(method="qhm", beta=0.9, nu=0.7, epochs=args.epochs,
                          seed=args.seed, num_samples=args.num_samples,
                          **overrides)
    result = train.train_and_evaluate(config, progress=True)
    records.append({"setting": label, **{k: result[k] for k in (
        "test_accuracy", "final_train_loss", "seconds", "history",
        "batch_size", "learning_rate", "schedule")}})
    print(f"  {label:40s} acc={result['test_accuracy']:.4f} "
          f"loss={result['final_train_loss']:.4f} ({result['seconds']:.0f}s)",
          flush=True)
  report.write_records(records, out)
  report.plot_curves(records, out / "curves.png",
                     "MNIST-1D, mini-batch QHM (β=0.9, ν=0.7), equal epochs")
  print("\n" + report.settings_table(records))
  print(f"\n{len(records)} runs in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
  main()
