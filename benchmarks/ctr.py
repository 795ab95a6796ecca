"""Click-through prediction, batch 1024 vs 8192, fairly tuned.

The SNGM paper's Table 8 (DeepFM on 10M Criteo samples, no decay, no
warmup; at batch 8192 momentum SGD failed, AUC 0.5) at CPU scale on a
**synthetic** click log (:func:`benchmarks.data.click_log`): Criteo cannot
be shipped or downloaded here, so the log is generated offline with the
properties that matter for the paper's claim: many categorical fields of
Zipf-distributed ids (rare ids, sparse embedding gradients), a hidden
click model and about 4% clicks. DeepFM (:class:`benchmarks.models.DeepFM`)
trained with momentum SGD, AdamW, LARS, LAMB and SNGM, every one tuned by
:mod:`benchmarks.sweep`'s protocol on validation AUC (scikit-learn's
``roc_auc_score``, a run with non-finite logits scores 0.5).

    python -m benchmarks.ctr --out DIR          # 1 seed: ~2.5 min
    python -m benchmarks.ctr --full --out DIR   # 3 seeds
    python -m benchmarks.ctr --full --weight_decay 0 --out DIR

Writes ``results.json`` (one record per run: ``method``, ``batch_size``,
``learning_rate``, ``seed``, ``test_auc``, ``validation_auc`` and every
config field), ``summary.json``, ``auc_vs_batch.png`` and ``curves.png``
(validation loss at the chosen learning rates).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks import configs, large_batch, sweep

CONFIG = configs.load("ctr")


def auc(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """``metric_fn``: scikit-learn's ROC AUC of the click logit
  ``logits[:, 1] - logits[:, 0]`` (0.5 if any logit is not finite)."""
  z = logits[:, 1] - logits[:, 0]
  if not np.all(np.isfinite(z)):
    return {"auc": 0.5}
  return {"auc": float(roc_auc_score(labels, z))}


def run(full: bool, out: Path, methods=None, batch_sizes=None,
        **overrides) -> list[dict]:
  return large_batch.run(
      large_batch.variants(full, methods, CONFIG),
      batch_sizes or CONFIG["batch_sizes"], large_batch.protocol(full, CONFIG),
      out, objective=sweep.AUC, metric_fn=auc,
      title="synthetic click log, DeepFM", curve="validation_loss",
      progress=True, **(CONFIG["train"] | overrides))


def main(argv=None) -> None:
  args, overrides = large_batch.parse_study(
      argv, __doc__.splitlines()[0], "3 seeds", "runs/ctr",
      {"num_samples": (int, "examples to generate (80%% train)"),
       "weight_decay": (float, "default 1e-3, the paper's")})
  start = time.perf_counter()
  summaries = run(args.full, Path(args.out), args.methods, args.batch_sizes,
                  **overrides)
  print("\ntest AUC, mean ± std over seeds (synthetic click log)")
  print(sweep.table(summaries, objective=sweep.AUC))
  print("\n" + large_batch.finished(sum(len(s["runs"]) for s in summaries),
                                    start, Path(args.out)))


if __name__ == "__main__":
  main()
