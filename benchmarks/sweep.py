"""The tuning protocol: how every method comparison in the benchmarks tunes.

One implementation (:func:`tune`, driven by :func:`study`) for the main
command, its ``--full`` version, the notebooks and every benchmark that puts
methods side by side. The protocol:

1. **Same grid for everyone.** Per method, per *variant* of the method's own
   knobs (LARS/CLARS mask and trust coefficient, warmup) and per batch size,
   ``grid_size`` learning rates spaced by a factor ``ratio`` in log space,
   centred on the variant's start value. ``grid_size`` and ``ratio`` are the
   same for every method and variant.
2. **Seeds.** Every learning rate is trained with every seed (all of them at
   once, :func:`benchmarks.train.train_population`).
3. **Selection on held-out data.** A learning rate's score is its
   *validation* accuracy (training examples held out of training) averaged
   over the seeds; a run whose loss went non-finite scores at most chance.
   The test set is never used to choose.
4. **The best point must be inside.** If the best learning rate is the
   smallest or largest of the grid, ``grid_size // 2`` more points are added
   beyond that edge and trained, and selection repeats, up to ``max_widen``
   times; a best still on an edge is flagged (``on_edge``) in the results
   and the table, never hidden. A grid on which no point scores at all
   (no run reached a step-count target) gives no direction and is not
   widened.
5. **Variants.** Each variant goes through steps 1-4; the variant whose
   chosen learning rate has the best score represents the method.
6. **Report.** Test accuracy at the chosen learning rate: mean ± sample std
   over the seeds. Method A *beats* B only when the gap of the means exceeds
   the larger of the two stds; otherwise they are *level*. The learning-rate
   *width* (largest / smallest learning rate whose seed-mean validation
   accuracy is within 1 point of the best) measures robustness to tuning.

Example (the logic alone, on a made-up score peaked at learning rate 3)::

    >>> import math
    >>> def evaluate(lrs):
    ...   return {lr: [{"validation_accuracy": 1 - math.log(lr / 3) ** 2,
    ...                 "test_accuracy": 0.5}] for lr in lrs}
    >>> result = tune(evaluate, 0.5, Protocol(grid_size=3))
    >>> result.learning_rate, result.on_edge, len(result.grid)
    (4.0, False, 6)
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from typing import NamedTuple

SCORE = "validation_accuracy"  # what selection ranks by
REPORT = "test_accuracy"  # what tables report


class Objective(NamedTuple):
  """What a study selects on and reports.

  Attributes:
    score: the runs of one learning rate (one per seed) -> a number to
      maximise, computed on held-out validation data.
    report: the record key whose seed mean ± std the tables report.
    tolerance: the score drop within which a learning rate counts towards
      the width.
    higher_is_better: whether a larger reported value wins.
    scale, digits, suffix: how a table prints the reported value
      (``scale * value`` with ``digits`` decimals, then ``suffix``).
    validation: the record key of the validation value the score is made
      of (plotted over the grid).
  """
  score: Callable[[Sequence[dict]], float]
  report: str
  tolerance: float
  higher_is_better: bool = True
  scale: float = 100.0
  digits: int = 2
  suffix: str = "%"
  validation: str = SCORE

  def cell(self, mean: float, std: float, seeds: int = 2) -> str:
    """``mean ± std``, or the mean alone for one seed (no spread)."""
    value = f"{self.scale * mean:.{self.digits}f}"
    if seeds < 2:
      return value + self.suffix
    return f"{value} ± {self.scale * std:.{self.digits}f}{self.suffix}"


def _validation_accuracy(runs: Sequence[dict]) -> float:
  return seed_mean(runs)


def _lowest_perplexity(runs: Sequence[dict]) -> float:
  """Minus the log of the seed-mean validation perplexity (-inf when a
  seed diverged)."""
  value = seed_mean(runs, "val_perplexity")
  return -math.log(value) if math.isfinite(value) else -math.inf


def _validation_auc(runs: Sequence[dict]) -> float:
  return seed_mean(runs, "validation_auc")


# final accuracy: the seed-mean validation accuracy, width within 1 point
ACCURACY = Objective(_validation_accuracy, REPORT, 0.01)
# language models: validation perplexity, width within 2% of the best
PERPLEXITY = Objective(_lowest_perplexity, "test_perplexity", 0.02,
                       higher_is_better=False, scale=1.0, suffix="",
                       validation="val_perplexity")
# click-through: validation AUC, width within 0.005 of the best
AUC = Objective(_validation_auc, "test_auc", 0.005, scale=1.0, digits=4,
                suffix="", validation="validation_auc")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The protocol's sizes; the same instance is used for every method."""
  grid_size: int = 5
  ratio: float = 2.0
  max_widen: int = 3
  seeds: tuple[int, ...] = (0, 1, 2)

  def __post_init__(self):
    if self.grid_size < 3:
      raise ValueError(f"grid_size must be >= 3 (an interior point), got "
                       f"{self.grid_size}")
    if self.ratio <= 1:
      raise ValueError(f"ratio must be > 1, got {self.ratio}")
    if self.max_widen < 0 or not self.seeds:
      raise ValueError("max_widen must be >= 0 and seeds non-empty")


def _round(x: float) -> float:
  return float(f"{x:.4g}")


def log_grid(center: float, size: int, ratio: float) -> list[float]:
  """``size`` learning rates ``center · ratio^k``, centred on ``center``
  (the extra point of an even size goes above), rounded to 4 digits."""
  low = -((size - 1) // 2)
  return [_round(center * ratio ** k) for k in range(low, low + size)]


def extend(grid: Sequence[float], side: str, count: int,
           ratio: float) -> list[float]:
  """``count`` new points beyond the ``"low"`` or ``"high"`` end of
  ``grid``, continuing its spacing."""
  if side == "high":
    return [_round(max(grid) * ratio ** k) for k in range(1, count + 1)]
  return [_round(min(grid) / ratio ** k) for k in range(1, count + 1)]


def seed_mean(runs: Sequence[dict], key: str = SCORE) -> float:
  return statistics.fmean(r[key] for r in runs)


def seed_std(runs: Sequence[dict], key: str = REPORT) -> float:
  """Sample standard deviation over seeds (0 for a single seed, NaN when a
  value is infinite)."""
  values = [r[key] for r in runs]
  if not all(map(math.isfinite, values)):
    return math.nan
  return statistics.stdev(values) if len(values) > 1 else 0.0


def edge(grid: Sequence[float], best: float) -> str | None:
  """``"low"``/``"high"`` when ``best`` is the grid's smallest/largest."""
  if best == min(grid):
    return "low"
  if best == max(grid):
    return "high"
  return None


@dataclasses.dataclass
class Tuned:
  """One variant at one batch size, after the protocol."""
  learning_rate: float
  score: float  # the objective's score (validation) at learning_rate
  mean: float  # seed mean of the reported value (test) at learning_rate
  std: float  # its sample std over seeds
  on_edge: bool
  width: float  # largest / smallest lr within the tolerance of the best
  grid: list[float]
  runs: dict[float, list[dict]]  # every run, by learning rate


def tune(evaluate: Callable[[list[float]], dict[float, list[dict]]],
         center: float, protocol: Protocol,
         objective: Objective = ACCURACY) -> Tuned:
  """Steps 1-4 of the protocol for one variant at one batch size.

  Args:
    evaluate: trains the given learning rates with every seed of the
      protocol; returns the records (with ``validation_accuracy`` and
      ``test_accuracy``) by learning rate.
    center: the variant's start value.
    protocol: grid size, spacing, widening limit and seeds.
    objective: what to select on and report (default: final accuracy).

  Returns:
    The chosen learning rate with its scores, the whole grid and its runs.
  """
  grid = log_grid(center, protocol.grid_size, protocol.ratio)
  runs = dict(evaluate(grid))
  for _ in range(protocol.max_widen):
    best = max(grid, key=lambda lr: objective.score(runs[lr]))
    side = edge(grid, best)
    if side is None or objective.score(runs[best]) == -math.inf:
      break  # inside, or no point scored at all: no direction to widen in
    new = extend(grid, side, protocol.grid_size // 2, protocol.ratio)
    runs.update(evaluate(new))
    grid = sorted(grid + new)
  best = max(grid, key=lambda lr: objective.score(runs[lr]))
  score = objective.score(runs[best])
  near = [lr for lr in grid
          if objective.score(runs[lr]) >= score - objective.tolerance]
  return Tuned(best, score, seed_mean(runs[best], objective.report),
               seed_std(runs[best], objective.report),
               edge(grid, best) is not None, max(near) / min(near), grid,
               runs)


def verdict(a: Tuned, b: Tuned, higher_is_better: bool = True) -> str:
  """``"beats"``, ``"level"`` or ``"behind"``: a against b, by test mean,
  counting a gap no larger than the larger std as level."""
  gap = a.mean - b.mean
  if abs(gap) <= max(a.std, b.std):
    return "level"
  return "beats" if (gap > 0) == higher_is_better else "behind"


def start_for(starts: dict[str, float], batch_size: int) -> float:
  """The start value keyed by the batch size nearest (in log scale) to
  ``batch_size``; widening corrects a poor guess."""
  key = min(starts, key=lambda b: abs(math.log(int(b) / batch_size)))
  return float(starts[key])


def study(variants: Sequence[dict], batch_sizes: Sequence[int],
          protocol: Protocol, train_fn: Callable[..., list[dict]],
          log: Callable[[str], None] = print,
          objective: Objective = ACCURACY) -> list[dict]:
  """The protocol over every variant and batch size.

  Args:
    variants: dicts with ``label`` (the table's row name), ``method``,
      ``settings`` (config fields: ``mask_all``, ``trust_coefficient``,
      ``warmup_epochs``, ...; a ``batch_size`` there overrides the column's)
      and ``start`` (learning rate by batch size).
    batch_sizes: the batch sizes to compare at (the table's columns).
    protocol: the same for every variant.
    train_fn: ``train_fn(method=..., batch_size=..., learning_rates=...,
      seeds=..., **settings)`` returns one record per (learning rate, seed).
    log: receives one progress line per trained grid.
    objective: what to select on and report (default: final accuracy).

  Returns:
    One summary per (variant, batch size): label, method, settings, batch
    size, the :class:`Tuned` fields except ``runs``, and ``runs`` as a flat
    list of records (every learning rate and seed trained).
  """
  summaries = []
  for batch in batch_sizes:
    for variant in variants:
      def evaluate(lrs, variant=variant, batch=batch):
        records = train_fn(method=variant["method"], learning_rates=lrs,
                           seeds=protocol.seeds, **({"batch_size": batch}
                                                    | variant.get("settings",
                                                                  {})))
        by_lr: dict[float, list[dict]] = {}
        for r in records:
          r["variant"] = variant["label"]
          by_lr.setdefault(_round(r["learning_rate"]), []).append(r)
        log(f"  {variant['label']:28s} batch {batch:<5d} validation score "
            "by learning rate: " + ", ".join(
                f"lr {lr:g} -> {objective.score(rs):.3g}"
                for lr, rs in by_lr.items()))
        return by_lr

      tuned = tune(evaluate, start_for(variant["start"], batch), protocol,
                   objective)
      fields = dataclasses.asdict(tuned)
      runs = fields.pop("runs")
      summaries.append({
          "label": variant["label"], "method": variant["method"],
          "settings": variant.get("settings", {}), "batch_size": batch,
          **fields, "runs": [r for lr in tuned.grid for r in runs[lr]]})
  return summaries


def best_variants(summaries: Sequence[dict]) -> list[dict]:
  """Per (method, batch size), the variant with the best score (step 5)."""
  best: dict = {}
  for s in summaries:
    key = (s["method"], s["batch_size"])
    if key not in best or s["score"] > best[key]["score"]:
      best[key] = s
  return list(best.values())


def chosen_runs(summary: dict) -> list[dict]:
  """A :func:`study` summary's runs at its chosen learning rate (one per
  seed)."""
  return [r for r in summary["runs"]
          if r["learning_rate"] == summary["learning_rate"]]


def as_tuned(summary: dict) -> Tuned:
  return Tuned(**{f.name: summary.get(f.name) for f in
                  dataclasses.fields(Tuned)})


def table(summaries: Sequence[dict], rows: str = "method",
          objective: Objective = ACCURACY) -> str:
  """Markdown: the reported value (default test accuracy) mean ± std
  (chosen learning rate, its width) per row (``"method"``: best variant;
  ``"label"``: every variant) and batch size; ``†`` marks a best learning
  rate on the grid's edge; the last line names the leader at each batch
  and who is level with it."""
  chosen = best_variants(summaries) if rows == "method" else list(summaries)
  batches = sorted({s["batch_size"] for s in chosen})
  names = list(dict.fromkeys(s[rows] for s in chosen))
  cell = {(s[rows], s["batch_size"]): s for s in chosen}
  seeds = {len({r["seed"] for r in s["runs"]}) for s in chosen}
  lines = ["| " + rows + " | " + " | ".join(f"batch {b}" for b in batches)
           + " |", "|---" * (len(batches) + 1) + "|"]
  for name in names:
    cells = []
    for b in batches:
      s = cell.get((name, b))
      if s is None:
        cells.append("")
        continue
      label = "" if rows == "label" or s["label"] == name else (
          f", {s['label']}")
      n_seeds = len({r["seed"] for r in s["runs"]})
      cells.append(f"{objective.cell(s['mean'], s['std'], n_seeds)} "
                   f"(lr {s['learning_rate']:g}{'†' if s['on_edge'] else ''}"
                   f", width ×{s['width']:g}{label})")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("")
  if max(seeds) < 2:
    lines.append("One seed per cell: no spread, so no claim of one method "
                 "beating another (run with more seeds).")
    return "\n".join(lines)
  verdicts = []
  for b in batches:
    here = [s for s in chosen if s["batch_size"] == b]
    lead = (max if objective.higher_is_better else min)(
        here, key=lambda s: s["mean"])
    level = [s[rows] for s in here if s is not lead
             and verdict(as_tuned(lead), as_tuned(s)) == "level"]
    verdicts.append(f"batch {b}: {lead[rows]} leads"
                    + (f", level with {', '.join(level)}" if level else ""))
  lines.append(f"Seeds per cell: {', '.join(map(str, sorted(seeds)))}. "
               + "; ".join(verdicts) + ".")
  return "\n".join(lines)
