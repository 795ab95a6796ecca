"""Byte-level language modeling, small vs large batch, fairly tuned.

The SNGM paper's Table 6 (a 2-layer LSTM on WikiText-2, batch 20 vs 2000,
momentum SGD with clipping, LARS, SNGM) at CPU scale, on a corpus every
machine has: the source of the Python standard library that ships with the
interpreter (:func:`benchmarks.data.python_source`; its Python version and
SHA-256 are stored in every record, since the bytes vary with the
interpreter). Two models (:mod:`benchmarks.models`): the paper's 2-layer
LSTM, and a small decoder-only transformer (the NIGT paper's BERT setting
and today's users'). Momentum SGD (clipped), SNGM, LARS and AdamW
(``--full``: also NIGT and LAMB, and Muon, Scion and Signum on the
transformer), every one tuned by :mod:`benchmarks.sweep`'s protocol on
validation perplexity, with equal bytes seen at each batch size.

    python -m benchmarks.language_model --out DIR          # 1 seed: ~6 min
    python -m benchmarks.language_model --full --out DIR   # 3 seeds, all
                                                           # methods
    python -m benchmarks.language_model --config muon_language_model --full

``--config NAME`` runs another study on this corpus from
``benchmarks/configs/NAME.json`` (``muon_language_model``: Muon's matrix
views, coefficients and variants against optax's Muon and AdamW).

Writes ``results.json`` (one record per run: ``method``, ``model``,
``batch_size``, ``learning_rate``, ``seed``, ``val_perplexity``,
``test_perplexity``, ``unigram_perplexity`` — the training bytes'
frequencies on the validation bytes — and every config field) and, per
model, ``<model>/summary.json``, ``<model>/perplexity_vs_batch.png`` and
``<model>/curves.png`` (validation loss per epoch at the chosen learning
rates). Perplexity is per byte.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from benchmarks import configs, data, large_batch, report, sweep

CONFIG = configs.load("language_model")


def perplexities(corpus: dict, unigram: float):
  """The ``derive`` hook: per-byte perplexities from the mean losses, the
  unigram baseline and the corpus's fingerprint."""
  def derive(record: dict) -> dict:
    def perplexity(loss):
      return math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf
    return {"val_perplexity": perplexity(record["validation_loss"]),
            "test_perplexity": perplexity(record["test_loss"]),
            "unigram_perplexity": unigram, "python": corpus["python"],
            "corpus_sha256": corpus["sha256"]}
  return derive


def run(full: bool, out: Path, models=None, methods=None, batch_sizes=None,
        config: dict = CONFIG, **overrides) -> dict[str, list[dict]]:
  """The study ``config`` for each model (and ``corpus.json``, the corpus's
  fingerprint); returns the summaries by model."""
  shared = config["train"] | overrides
  dataset = data.python_source(shared["num_samples"])
  unigram = data.unigram_perplexity(dataset.y_train, dataset.y_validation)
  corpus = data.corpus_info()
  out.mkdir(parents=True, exist_ok=True)
  (out / "corpus.json").write_text(json.dumps(corpus, indent=2))
  derive = perplexities(corpus, unigram)
  protocol = large_batch.protocol(full, config)
  chosen = large_batch.variants(full, methods, config)
  results = {}
  for model in models or config["models"]:
    print(f"{model} (unigram perplexity {unigram:.2f} on validation bytes)")
    results[model] = large_batch.run(
        [v | {"start": v["start"][model]} for v in chosen
         if model in v["start"]],
        batch_sizes or config["batch_sizes"], protocol, out / model,
        objective=sweep.PERPLEXITY, derive=derive,
        title=f"byte-level LM, {model}", curve="validation_loss",
        progress=True, model=model, **shared)
  report.write_records([r for summaries in results.values()
                        for s in summaries for r in s["runs"]], out)
  return results


def main(argv=None) -> None:
  args, overrides = large_batch.parse_study(
      argv, __doc__.splitlines()[0], "3 seeds, every method",
      None,
      {"epochs": (int, None), "num_samples": (int, "64-byte training windows")},
      models={"nargs": "+", "default": None, "choices": CONFIG["models"]},
      config={"default": "language_model",
              "help": "a study in benchmarks/configs/ on this corpus"})
  out = Path(args.out or f"runs/{args.config}")
  start = time.perf_counter()
  config = (CONFIG if args.config == "language_model"
            else configs.load(args.config))
  results = run(args.full, out, args.models, args.methods, args.batch_sizes,
                config, **overrides)
  for model, summaries in results.items():
    print(f"\n{model}: test perplexity per byte, mean ± std over seeds "
          f"(unigram {summaries[0]['runs'][0]['unigram_perplexity']:.2f})")
    print(sweep.table(summaries, objective=sweep.PERPLEXITY))
    if len({s["label"] for s in summaries}) > len(
        {s["method"] for s in summaries}):
      print(sweep.table(summaries, rows="label", objective=sweep.PERPLEXITY))
  print("\n" + large_batch.finished(
      sum(len(s["runs"]) for v in results.values() for s in v), start, out))


if __name__ == "__main__":
  main()
