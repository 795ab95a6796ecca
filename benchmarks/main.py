"""Train one model with one method from flags: ``python -m benchmarks.main``.

Every field of :class:`benchmarks.train.Config` is a flag (``--method lars
--batch_size 4096 --learning_rate 5 ...``); ``--workdir DIR`` receives
``metrics.json``, ``metrics.csv``, ``curves.png`` and the per-epoch orbax
checkpoints (``--resume`` continues from them).
"""

from __future__ import annotations

import argparse
import dataclasses

from benchmarks import train


def parse_config(argv=None) -> tuple[train.Config, str | None]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for field in dataclasses.fields(train.Config):
    if field.type == "bool":
      parser.add_argument(f"--{field.name}", action="store_true")
      continue
    if str(field.type).startswith("tuple[int"):  # --epoch_batches 32 64 128
      parser.add_argument(f"--{field.name}", type=int, nargs="+",
                          default=field.default)
      continue
    kind = {"int": int, "float": float, "str": str}.get(
        str(field.type).split(" ")[0], str)
    parser.add_argument(f"--{field.name}", type=kind, default=field.default)
  parser.add_argument("--workdir", default=None,
                      help="where metrics.json, metrics.csv, curves.png and "
                      "the per-epoch orbax checkpoints go")
  args = vars(parser.parse_args(argv))
  workdir = args.pop("workdir")
  if args["epoch_batches"] is not None:
    args["epoch_batches"] = tuple(args["epoch_batches"])
  return train.Config(**args), workdir


def main(argv=None) -> None:
  config, workdir = parse_config(argv)
  result = train.train_and_evaluate(config, workdir, progress=True)
  print(f"{config.method} batch {config.batch_size} lr {config.learning_rate}: "
        f"test accuracy {result['test_accuracy']:.4f} "
        f"in {result['seconds']:.1f}s")


if __name__ == "__main__":
  main()
