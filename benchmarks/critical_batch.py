"""How large a batch? Steps to a target accuracy against the batch size.

McCandlish et al. (*An Empirical Model of Large-Batch Training*, 2018)
predict that the optimizer steps ``S`` needed to reach a given loss fall with
the batch size ``B`` as

.. math:: S = S_\\min \\, (1 + B_\\text{crit} / B),

so ``S`` halves when the batch doubles while ``B << B_crit`` and stops
falling beyond it; ``B_crit`` is near the gradient noise scale
``B_simple = tr(Σ) / ‖G‖²`` measured at that point of training. The SNGM
paper claims that SNGM "can adopt a larger batch size than MSGD" (Theorem
and Corollary 1): in these terms, a larger ``B_crit``.

This study measures it on MNIST-1D with the 1-D CNN. For momentum SGD,
SNGM and LARS at each batch size, a constant learning rate is tuned by the
protocol of :mod:`benchmarks.sweep` (equal log grids widened until the best
is inside, seeds) on the *steps to the target accuracy on validation
examples*; the reported value is the steps to the same target on the test
set. Accuracies and the noise-scale estimators are checked at steps spaced
by ``checkpoint_ratio`` (so a step count is known to that factor), inside
the compiled training loop. Per method the fit gives ``S_min`` and
``B_crit`` with a bootstrap over seeds; the runs also give ``B_simple`` at
the target and each method's best learning rate against the batch size.

The second part compares ways of growing the batch at equal examples seen
(:func:`run_growth`): a fixed small and a fixed large batch, fixed doubling
ramps, and :func:`normopt.batch_growth`, which grows the batch as the
measured noise scale grows; each with its constant learning rate tuned on
the final validation accuracy, judged by issue 23's rule
(:func:`growth_verdicts`). Seesaw (:func:`normopt.seesaw_schedule`) turns
a cosine schedule's halvings into batch doublings; it is judged against its
base, the fixed small batch with the same cosine
(:func:`seesaw_verdicts`). The critical-batch warmup trains the batch per
epoch that :mod:`benchmarks.branched` measured (``--local``) and is judged
by the rule of measured growth.

    python -m benchmarks.critical_batch          # 1 seed, batch 32/256/2048,
                                                 # SNGM's growth schemes
    python -m benchmarks.critical_batch --full   # 3 seeds, batch 32 to 8192,
                                                 # every method's growth
    python -m benchmarks.critical_batch --only growth --methods sngm
    python -m benchmarks.critical_batch --full --only growth \
        --methods msgd sngm lars muon --schemes "fixed 32, cosine" seesaw
    python -m benchmarks.critical_batch --full --only growth \
        --methods msgd sngm lars muon --schemes "critical-batch warmup" \
        --local runs/local_critical_batch/local.json
    python -m benchmarks.critical_batch --merge A/growth.json B/growth.json

Writes ``results.json`` (one record per run, with its checkpoints),
``summary.json`` (the tuned cells, the fits, provenance),
``critical_batch.md`` and ``critical_batch.png``, and for the growth part
``growth.json``, ``growth.md`` and ``growth.png``, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks import configs, large_batch, report, sweep, train

CONFIG = configs.load("critical_batch")


def checkpoint_steps(max_steps: int, ratio: float) -> list[int]:
  """Steps ``round(ratio^k)`` up to ``max_steps`` (and ``max_steps``)."""
  if max_steps < 1 or ratio <= 1:
    raise ValueError("max_steps must be >= 1 and ratio > 1")
  count = int(math.log(max_steps) / math.log(ratio)) + 1
  return sorted({min(round(ratio ** k), max_steps) for k in range(count + 1)}
                | {max_steps})


def steps_to(checkpoints: Sequence[dict], key: str, target: float) -> float:
  """The optimizer steps at the first checkpoint whose ``key`` reaches
  ``target`` (inf if none does)."""
  return next((c["optimizer_step"] for c in checkpoints if c[key] >= target),
              math.inf)


def _checkpoints(cfg: train.Config, examples: int, ratio: float) -> list[int]:
  """:func:`checkpoint_steps` over every pass of a run of ``cfg``."""
  return checkpoint_steps(train.make_plan(cfg, examples).steps * cfg.epochs,
                          ratio)


def _add_steps_to_target(records: Sequence[dict], target: float) -> None:
  for r in records:
    for split in ("validation", "test"):
      r[f"{split}_steps"] = steps_to(r["checkpoints"], f"{split}_accuracy",
                                     target)


def _fewest_steps(runs: Sequence[dict]) -> float:
  """Selection score: minus the log of the seed-mean steps to the target on
  validation examples (-inf when a seed never reached it)."""
  return -math.log(sweep.seed_mean(runs, "validation_steps"))


# fewest steps to the target; the width counts learning rates within ~22%
STEPS = sweep.Objective(_fewest_steps, "test_steps", 0.2)


def stopper(target: float, seeds: int, margin: float, best_so_far: float):
  """The ``until`` rule for :func:`benchmarks.train.train_population`: stop
  once the training is ``margin`` times past the step at which some
  learning rate had every seed at the target on both validation and test
  examples (or past ``best_so_far``, from the grid's earlier points): a
  later learning rate cannot be chosen, and the margin measures the width."""
  def until(steps: np.ndarray, values: dict) -> bool:
    done = ((values["validation_accuracy"] >= target)
            & (values["test_accuracy"] >= target))
    first = np.where(done.any(axis=1), steps[done.argmax(axis=1)], np.inf)
    best = min(best_so_far, first.reshape(-1, seeds).max(axis=1).min())
    return bool(steps[-1] >= margin * best or np.isfinite(first).all())
  return until


def run(variants: list[dict], batch_sizes: Sequence[int],
        protocol: sweep.Protocol, out: Path, *, target: float,
        max_examples: int, checkpoint_ratio: float, margin: float = 1.25,
        **config) -> tuple[list[dict], dict, dict]:
  """The protocol with the steps-to-target objective over ``variants`` x
  ``batch_sizes``; ``config`` holds the shared
  :class:`benchmarks.train.Config` fields. Writes and returns the
  summaries (each also with ``b_simple``, the noise scale at the target),
  the fits and the learning-rate exponents by method."""
  examples = train.training_examples(train.Config(**config))
  best: dict = {}

  def train_fn(*, learning_rates, seeds, method, batch_size, **fields):
    epochs = math.ceil(max_examples / (examples // batch_size * batch_size))
    cell = (method, batch_size)
    cfg = train.Config(**config, **fields, method=method,
                       batch_size=batch_size, epochs=epochs)
    records = train.train_population(
        cfg, learning_rates, seeds,
        eval_at=_checkpoints(cfg, examples, checkpoint_ratio),
        until=stopper(target, len(seeds), margin, best.get(cell, math.inf)))
    _add_steps_to_target(records, target)
    for i in range(0, len(records), len(seeds)):
      best[cell] = min(best.get(cell, math.inf), max(
          max(r["validation_steps"], r["test_steps"])
          for r in records[i:i + len(seeds)]))
    return records

  summaries = sweep.study(variants, batch_sizes, protocol, train_fn,
                          objective=STEPS)
  for s in summaries:
    s["b_simple"] = noise_scale_at_target(s)
  fits = {m: fit_with_bootstrap(summaries, m)
          for m in dict.fromkeys(s["method"] for s in summaries)}
  rules = {m: learning_rate_exponent(summaries, m) for m in fits}
  out.mkdir(parents=True, exist_ok=True)
  report.write_records(_finite([r for s in summaries for r in s["runs"]]),
                       out)
  (out / "summary.json").write_text(json.dumps(_finite({
      "protocol": vars(protocol) | {"seeds": list(protocol.seeds)},
      "config": config, "target": target, "max_examples": max_examples,
      "checkpoint_ratio": checkpoint_ratio, "margin": margin,
      "provenance": report.provenance(), "fits": fits,
      "learning_rate_exponents": rules,
      "summaries": [{k: v for k, v in s.items() if k != "runs"}
                    for s in summaries]}), indent=2))
  plot(summaries, fits, target, out / "critical_batch.png")
  (out / "critical_batch.md").write_text(
      tables(summaries, fits, rules) + "\n\n" + _note() + "\n")
  return summaries, fits, rules


def _note() -> str:
  return report.command_note("benchmarks.critical_batch")


def _finite(tree):
  """JSON has no infinity: steps never reached are written as null."""
  if isinstance(tree, dict):
    return {k: _finite(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_finite(v) for v in tree]
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree


def noise_scale_at_target(summary: dict) -> float | None:
  """``B_simple`` at the target, from the chosen learning rate's runs: the
  sum of the ``tr(Σ)`` estimates over the checkpoints in the second half of
  the way to the target (step in [S/2, S]) over the sum of the ``‖G‖²``
  estimates (McCandlish et al. average the two separately); None where the
  target was not reached."""
  if not math.isfinite(summary["mean"]):
    return None
  trace = grad_sq = 0.0
  for r in sweep.chosen_runs(summary):
    steps = r["validation_steps"]
    for c in r["checkpoints"]:
      if steps / 2 <= c["step"] <= steps:
        trace += c["trace"]
        grad_sq += c["grad_sq"]
  return trace / grad_sq if grad_sq > 0 else None


def fit_steps(batch_sizes, steps) -> tuple[float, float]:
  """``(S_min, B_crit)`` of ``S = S_min (1 + B_crit / B)``: least squares
  of ``S`` against ``1/B`` in relative error (weights ``1/S``)."""
  b, a = np.polyfit(1 / np.asarray(batch_sizes, float),
                    np.asarray(steps, float), 1, w=1 / np.asarray(steps))
  return float(a), float(b / a)


def fit_with_bootstrap(summaries: Sequence[dict], method: str,
                       repeats: int = 1000) -> dict:
  """The fit over the batch sizes where every seed reached the target, and
  its bootstrap over seeds (each batch size's seeds resampled): the fitted
  values and the bootstrap's std (0 with one seed)."""
  cells = sorted((s for s in summaries if s["method"] == method),
                 key=lambda s: s["batch_size"])
  steps = {s["batch_size"]: [r["test_steps"] for r in sweep.chosen_runs(s)]
           for s in cells}
  used = [b for b, v in steps.items() if np.isfinite(v).all()]
  result = {"batch_sizes": used, "seeds": min(map(len, steps.values())),
            "not_reached": [b for b in steps if b not in used]}
  if len(used) < 3:
    return result | {"s_min": None, "b_crit": None}
  s_min, b_crit = fit_steps(used, [np.mean(steps[b]) for b in used])
  rng = np.random.default_rng(0)
  draws = np.array([fit_steps(used, [np.mean(rng.choice(steps[b], len(
      steps[b]))) for b in used]) for _ in range(repeats)])
  return result | {"s_min": s_min, "b_crit": b_crit,
                   "e_min": s_min * b_crit,
                   "s_min_std": float(draws[:, 0].std()),
                   "b_crit_std": float(draws[:, 1].std())}


def learning_rate_exponent(summaries: Sequence[dict], method: str) -> dict:
  """The chosen learning rate's power law in the batch size, ``lr ∝ B^p``,
  over the batch sizes where the target was reached: ``p`` and its
  standard error (least squares in log-log)."""
  cells = [s for s in summaries
           if s["method"] == method and math.isfinite(s["mean"])]
  if len(cells) < 3:
    return {"exponent": None, "stderr": None}
  x = np.log([s["batch_size"] for s in cells])
  y = np.log([s["learning_rate"] for s in cells])
  (p, _), cov = np.polyfit(x, y, 1, cov=True)
  return {"exponent": float(p), "stderr": float(np.sqrt(cov[0, 0]))}


def plot(summaries: Sequence[dict], fits: dict, target: float,
         path: Path) -> None:
  """Left: test steps to the target against the batch size (seed mean ±
  std at the tuned learning rate), the fits, each method's ``B_crit``
  (dashed) and ``B_simple`` at the target (dotted). Right: ``B_simple``
  over training against the validation accuracy, at the chosen learning
  rates, for every batch size of each method."""
  plt = report._pyplot()
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  for i, (method, fit) in enumerate(fits.items()):
    color = f"C{i}"
    cells = sorted((s for s in summaries if s["method"] == method),
                   key=lambda s: s["batch_size"])
    reached = [s for s in cells if math.isfinite(s["mean"])]
    a.errorbar([s["batch_size"] for s in reached],
               [s["mean"] for s in reached],
               yerr=[0 if math.isnan(s["std"]) else s["std"]
                     for s in reached], fmt="o", color=color, capsize=3,
               label=method)
    if fit["b_crit"] is not None:
      grid = np.geomspace(min(fit["batch_sizes"]), max(fit["batch_sizes"]))
      a.plot(grid, fit["s_min"] * (1 + fit["b_crit"] / grid), color=color)
      a.axvline(fit["b_crit"], color=color, ls="--", lw=1)
    noise = [s["b_simple"] for s in cells if s.get("b_simple")]
    if noise:
      a.axvline(float(np.median(noise)), color=color, ls=":", lw=1)
    for s in cells:
      for r in sweep.chosen_runs(s)[:1]:
        acc = np.array([c["validation_accuracy"] for c in r["checkpoints"]])
        trace = np.array([c["trace"] for c in r["checkpoints"]])
        grad_sq = np.array([c["grad_sq"] for c in r["checkpoints"]])
        window = np.ones(5)
        smooth = (np.convolve(trace, window, "same")
                  / np.convolve(grad_sq, window, "same"))
        keep = smooth > 0
        b.plot(acc[keep], smooth[keep], color=color, alpha=0.6,
               label=None if s is not cells[0] else method)
  a.set(xscale="log", yscale="log", xlabel="batch size",
        ylabel=f"test steps to {100 * target:g}%",
        title="steps to target; fit, B_crit (--), B_simple (:)")
  a.legend()
  b.axvline(target, color="gray", ls="--", lw=1)
  b.set(yscale="log", xlabel="validation accuracy during training",
        ylabel="B_simple (5-checkpoint window)",
        title="measured noise scale over training")
  b.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def tables(summaries: Sequence[dict], fits: dict, rules: dict) -> str:
  """Markdown: steps to the target per method and batch size, then the fits
  and the answer to the claim."""
  batches = sorted({s["batch_size"] for s in summaries})
  lines = ["| method | " + " | ".join(f"batch {b}" for b in batches) + " |",
           "|---" * (len(batches) + 1) + "|"]
  for method in fits:
    cells = {s["batch_size"]: s for s in summaries if s["method"] == method}
    row = []
    for b in batches:
      s = cells.get(b)
      if s is None or not math.isfinite(s["mean"]):
        row.append("not reached" if s else "")
        continue
      row.append(f"{s['mean']:.0f} ± {0 if math.isnan(s['std']) else s['std']:.0f}"
                 f" (lr {s['learning_rate']:g}{'†' if s['on_edge'] else ''})")
    lines.append(f"| {method} | " + " | ".join(row) + " |")
  lines += ["", "| method | S_min | B_crit | E_min = S_min·B_crit | "
            "B_simple at target (median) | lr ∝ B^p |", "|---|---|---|---|---|---|"]
  for method, fit in fits.items():
    noise = [s["b_simple"] for s in summaries
             if s["method"] == method and s.get("b_simple")]
    rule = rules[method]
    fitted = ("too few batch sizes reached the target | | |"
              if fit["b_crit"] is None else
              f"{fit['s_min']:.0f} ± {fit['s_min_std']:.0f} | "
              f"{fit['b_crit']:.0f} ± {fit['b_crit_std']:.0f} | "
              f"{fit['e_min']:.3g} |")
    lines.append(
        f"| {method} | {fitted} "
        + (f"{np.median(noise):.0f}" if noise else "") + " | "
        + ("" if rule["exponent"] is None else
           f"{rule['exponent']:.2f} ± {rule['stderr']:.2f}") + " |")
  lines += ["", claim(fits)]
  return "\n".join(lines)


def claim(fits: dict) -> str:
  """The SNGM paper's claim in these terms: is SNGM's ``B_crit`` larger
  than momentum SGD's by more than the larger bootstrap std?"""
  a, b = fits.get("sngm"), fits.get("msgd")
  if not a or not b or a["b_crit"] is None or b["b_crit"] is None:
    return "Claim not testable: a fit is missing."
  if a["seeds"] < 2 or b["seeds"] < 2:
    return "One seed: no spread, so no verdict on the claim (run --full)."
  spread = max(a["b_crit_std"], b["b_crit_std"])
  gap = a["b_crit"] - b["b_crit"]
  verdict = ("larger than" if gap > spread else "smaller than"
             if -gap > spread else "level with")
  return (f"Claim (SNGM's B_crit is larger than momentum SGD's): SNGM "
          f"{a['b_crit']:.0f} ± {a['b_crit_std']:.0f} is {verdict} MSGD's "
          f"{b['b_crit']:.0f} ± {b['b_crit_std']:.0f}.")


def growth_variants(config: dict, methods: Sequence[str],
                    schemes: Sequence[str] | None = None,
                    local: str | Path | None = None) -> list[dict]:
  """One variant per (method, batch scheme) of ``config["growth"]`` (only
  the schemes labelled in ``schemes`` if given); ``config["growth"]
  ["starts"]`` adds starts for methods without a critical-batch variant. A
  scheme whose ``epoch_batches`` is ``"measured"`` takes each method's
  warmup from ``local`` (a ``local.json`` of :mod:`benchmarks.branched`)."""
  starts = {v["method"]: v["start"] for v in config["variants"]}
  starts |= config["growth"].get("starts", {})
  chosen = [scheme for scheme in config["growth"]["schemes"]
            if schemes is None or scheme["label"] in schemes]
  warmups = {}
  if any(s["settings"].get("epoch_batches") == "measured" for s in chosen):
    if local is None:
      raise ValueError("the critical-batch warmup needs --local, the "
                       "local.json of python -m benchmarks.branched")
    warmups = {r["method"]: tuple(r["warmup"]) for r in json.loads(
        Path(local).read_text())["methods"]}
    missing = sorted(set(methods) - set(warmups))
    if missing:
      raise ValueError(f"{local} has no warmup for {', '.join(missing)}")

  def settings(scheme, method):
    if scheme["settings"].get("epoch_batches") != "measured":
      return scheme["settings"]
    return scheme["settings"] | {"epoch_batches": warmups[method]}
  return [{"label": f"{m}: {scheme['label']}", "method": m,
           "scheme": scheme["label"], "settings": settings(scheme, m),
           "start": {"32": sweep.start_for(starts[m], scheme["start_batch"])}}
          for m in methods for scheme in chosen]


def run_growth(variants: list[dict], protocol: sweep.Protocol, out: Path, *,
               epochs: int, target: float, checkpoint_ratio: float,
               **config) -> list[dict]:
  """Every batch scheme for ``epochs`` epochs (equal examples seen), its
  constant learning rate tuned on the final validation accuracy; records
  the optimizer steps to ``target`` and in all. Writes ``growth.json`` and
  ``growth.png`` to ``out`` and returns the summaries."""
  examples = train.training_examples(train.Config(**config))

  def train_fn(*, learning_rates, seeds, **fields):
    cfg = train.Config(**(config | fields), epochs=epochs)
    records = train.train_population(
        cfg, learning_rates, seeds,
        eval_at=_checkpoints(cfg, examples, checkpoint_ratio))
    _add_steps_to_target(records, target)
    return records

  summaries = sweep.study(variants, [32], protocol, train_fn)
  for s, v in zip(summaries, variants):
    s["scheme"] = v["scheme"]
    runs = sweep.chosen_runs(s)
    for key in ("optimizer_steps", "test_steps", "seconds"):
      s[key] = sweep.seed_mean(runs, key)
    if v["settings"].get("measured_growth"):
      s["final_batch"] = sweep.seed_mean(runs, "final_batch")
  out.mkdir(parents=True, exist_ok=True)
  (out / "growth.json").write_text(json.dumps(_finite({
      "protocol": vars(protocol) | {"seeds": list(protocol.seeds)},
      "config": config, "epochs": epochs, "target": target,
      "provenance": report.provenance(),
      "verdicts": growth_verdicts(summaries),
      "warmup_verdicts": growth_verdicts(summaries, "epoch_batches"),
      "seesaw_verdicts": seesaw_verdicts(summaries),
      "summaries": summaries}), indent=2))
  plot_growth(summaries, target, out / "growth.png")
  (out / "growth.md").write_text(
      growth_table(summaries) + "\n\n" + _note() + "\n")
  return summaries


def _is_seesaw(s: dict) -> bool:
  return s["settings"].get("batch_schedule") == "seesaw"


def seesaw_verdicts(summaries: Sequence[dict]) -> dict[str, str]:
  """Per method, Seesaw's claim: at its base schedule's accuracy (within the
  larger std) with at least 30% fewer optimizer steps. Its base is the
  fixed-batch scheme with the same batch size and learning-rate schedule."""
  verdicts = {}
  for s in (s for s in summaries if _is_seesaw(s)):
    base = next((b for b in summaries if b["method"] == s["method"]
                 and "micro_batch" not in b["settings"]
                 and b["settings"]["batch_size"] == s["settings"]["batch_size"]
                 and b["settings"].get("schedule") == s["settings"].get(
                     "schedule")), None)
    if base is None:
      continue
    fewer = 1 - s["optimizer_steps"] / base["optimizer_steps"]
    facts = (f"Seesaw {100 * s['mean']:.2f} ± {100 * s['std']:.2f}% in "
             f"{s['optimizer_steps']:.0f} steps; {base['scheme']} "
             f"{100 * base['mean']:.2f} ± {100 * base['std']:.2f}% in "
             f"{base['optimizer_steps']:.0f} steps ({100 * fewer:.0f}% "
             "fewer steps)")
    if len(sweep.chosen_runs(s)) < 2:
      verdicts[s["method"]] = f"one seed, no verdict: {facts}"
      continue
    level = base["mean"] - s["mean"] <= max(base["std"], s["std"])
    verdicts[s["method"]] = (
        f"{'holds' if level and fewer >= 0.3 else 'does not hold'}: {facts}")
  return verdicts


def growth_verdicts(summaries: Sequence[dict],
                    adaptive: str = "measured_growth") -> dict[str, str]:
  """Per method, issue 23's rule for the scheme whose settings hold
  ``adaptive`` (``measured_growth``: :func:`normopt.batch_growth`;
  ``epoch_batches``: the critical-batch warmup): it wins only if its test
  accuracy is within the larger std of the smallest fixed batch's with at
  least 30% fewer optimizer steps, and it is at least level with the best
  fixed ramp (the ramp chosen on validation accuracy). Schemes are told
  apart by their settings: no ``micro_batch`` (fixed), ``measured_growth``
  or ``epoch_batches`` (adaptive), or else a ramp; schemes with their own
  ``schedule`` (Seesaw and its base) are left out here
  (:func:`seesaw_verdicts`)."""
  verdicts = {}
  for method in dict.fromkeys(s["method"] for s in summaries):
    cells = [s for s in summaries if s["method"] == method
             and not _is_seesaw(s) and "schedule" not in s["settings"]]
    fixed = [s for s in cells if "micro_batch" not in s["settings"]]
    grown = [s for s in cells if s["settings"].get(adaptive)]
    ramps = [s for s in cells if s not in fixed
             and not s["settings"].get("measured_growth")
             and not s["settings"].get("epoch_batches")]
    if not fixed or not grown or not ramps:
      continue
    small = min(fixed, key=lambda s: s["settings"]["batch_size"])
    grown = grown[0]
    ramp = max(ramps, key=lambda s: s["score"])
    seeds = len(sweep.chosen_runs(grown))
    fewer = 1 - grown["optimizer_steps"] / small["optimizer_steps"]
    as_accurate = (small["mean"] - grown["mean"]
                   <= max(small["std"], grown["std"]))
    against_ramp = sweep.verdict(sweep.as_tuned(grown), sweep.as_tuned(ramp))
    final = (f" (final batch {grown['final_batch']:.0f})"
             if "final_batch" in grown else "")
    facts = (f"{grown['scheme']} {100 * grown['mean']:.2f} ± "
             f"{100 * grown['std']:.2f}% in {grown['optimizer_steps']:.0f} "
             f"steps{final}; {small['scheme']} "
             f"{100 * small['mean']:.2f} ± {100 * small['std']:.2f}% in "
             f"{small['optimizer_steps']:.0f} steps ({100 * fewer:.0f}% "
             f"fewer steps); best ramp ({ramp['scheme']}) "
             f"{100 * ramp['mean']:.2f} ± {100 * ramp['std']:.2f}% in "
             f"{ramp['optimizer_steps']:.0f} steps")
    if seeds < 2:
      verdicts[method] = f"one seed, no verdict: {facts}"
      continue
    win = as_accurate and fewer >= 0.3 and against_ramp != "behind"
    verdicts[method] = (f"{'win' if win else 'no win'}: {facts}; "
                        f"against the ramp: {against_ramp}")
  return verdicts


def plot_growth(summaries: Sequence[dict], target: float, path: Path) -> None:
  """Per method, the test accuracy of each scheme at its chosen learning
  rate (first seed) against the optimizer steps taken."""
  plt = report._pyplot()
  methods = list(dict.fromkeys(s["method"] for s in summaries))
  fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.8),
                           squeeze=False)
  for ax, method in zip(axes[0], methods):
    for s in (s for s in summaries if s["method"] == method):
      r = sweep.chosen_runs(s)[0]
      ax.plot([c["optimizer_step"] for c in r["checkpoints"]],
              [c["test_accuracy"] for c in r["checkpoints"]],
              label=f"{s['scheme']} (lr {s['learning_rate']:g})")
    ax.axhline(target, color="gray", ls="--", lw=1)
    ax.set(xscale="log", ylim=(0.5, 1.0), xlabel="optimizer steps",
           ylabel="test accuracy", title=f"{method}: equal examples seen")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def growth_table(summaries: Sequence[dict]) -> str:
  """Markdown: per method and scheme, the test accuracy at the chosen
  learning rate, the optimizer steps (in all and to the target), the
  seconds per run, the learning rate and its grid, and the tuning runs
  (every learning rate times every seed); then the verdicts."""
  lines = ["| method | scheme | test accuracy | optimizer steps | steps to "
           "target | seconds per run | lr (grid) | tuning runs |",
           "|---" * 8 + "|"]
  for s in summaries:
    grid = s.get("grid") or [s["learning_rate"]]
    lines.append(
        f"| {s['method']} | {s['scheme']} | {100 * s['mean']:.2f} ± "
        f"{100 * s['std']:.2f}% | {s['optimizer_steps']:.0f} | "
        f"{s['test_steps']:.0f} | {s['seconds']:.0f} | "
        f"{s['learning_rate']:g}{'†' if s['on_edge'] else ''} "
        f"({min(grid):g}-{max(grid):g}) | {len(s['runs'])} |")
  lines += [""] + [f"- {m}: {v}" for m, v in
                   growth_verdicts(summaries).items()]
  lines += [f"- {m}, critical-batch warmup: {v}" for m, v in
            growth_verdicts(summaries, "epoch_batches").items()]
  lines += [f"- {m}, Seesaw: {v}" for m, v in
            seesaw_verdicts(summaries).items()]
  return "\n".join(lines)


def merge_growth(paths: Sequence[str | Path], out: Path) -> list[dict]:
  """One table from several growth runs (each a ``growth.json`` with its
  ``growth.md`` beside it) made with the same config and protocol: their
  summaries by method in the order given, the verdicts over all of them,
  and every run's provenance line. Writes ``growth.md`` to ``out``."""
  summaries, notes = [], []
  for path in map(Path, paths):
    summaries += json.loads(path.read_text())["summaries"]
    notes += [line for line in (path.parent / "growth.md").read_text()
              .splitlines() if line.startswith("Made by")]
  for s in summaries:
    for key in ("mean", "std", "optimizer_steps", "test_steps", "seconds"):
      s[key] = math.inf if s.get(key) is None else s[key]
  methods = list(dict.fromkeys(s["method"] for s in summaries))
  summaries.sort(key=lambda s: methods.index(s["method"]))
  out.mkdir(parents=True, exist_ok=True)
  (out / "growth.md").write_text(
      growth_table(summaries) + "\n\nMerged by `"
      + report.command_note("benchmarks.critical_batch").split("`")[1]
      + "` from:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
  return summaries


def _default_schemes(local: str | None) -> list[str] | None:
  """Every scheme, but the critical-batch warmup only with its ``--local``
  measurement."""
  if local is not None:
    return None
  return [s["label"] for s in CONFIG["growth"]["schemes"]
          if s["settings"].get("epoch_batches") != "measured"]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--full", action="store_true",
                      help="3 seeds, batch 32 to 8192, every method in the "
                      "growth comparison")
  parser.add_argument("--only", choices=("critical", "growth"), default=None,
                      help="run one of the two parts")
  parser.add_argument("--methods", nargs="+", default=None)
  parser.add_argument("--batch_sizes", nargs="+", type=int, default=None)
  parser.add_argument("--target", type=float, default=CONFIG["target"])
  parser.add_argument("--max_examples", type=int,
                      default=CONFIG["max_examples"])
  parser.add_argument("--growth_epochs", type=int, default=None)
  parser.add_argument("--schemes", nargs="+", default=None,
                      help="only these batch schemes (labels) of the growth "
                      "part")
  parser.add_argument("--local", default=None,
                      help="local.json of python -m benchmarks.branched: "
                      "the critical-batch warmup scheme's batches")
  parser.add_argument("--merge", nargs="+", default=None,
                      help="no training: one growth table (growth.md in "
                      "--out) from these growth.json files")
  parser.add_argument("--train_subset", type=int, default=None,
                      help="train on the first N examples only (smoke runs)")
  parser.add_argument("--out", default="runs/critical_batch")
  args = parser.parse_args(argv)
  if args.merge:
    print(growth_table(merge_growth(args.merge, Path(args.out))))
    return
  sizes = CONFIG["full" if args.full else "quick"]
  protocol = large_batch.protocol(args.full, CONFIG)
  methods = args.methods or [v["method"] for v in CONFIG["variants"]]
  shared = CONFIG["train"] | ({} if args.train_subset is None
                              else {"train_subset": args.train_subset})
  out = Path(args.out)
  start = time.perf_counter()
  runs = 0
  if args.only != "growth":
    summaries, fits, rules = run(
        [v for v in CONFIG["variants"] if v["method"] in methods],
        args.batch_sizes or sizes["batch_sizes"], protocol, out,
        target=args.target, max_examples=args.max_examples,
        checkpoint_ratio=CONFIG["checkpoint_ratio"], **shared)
    print()
    print(tables(summaries, fits, rules))
    runs += sum(len(s["runs"]) for s in summaries)
  if args.only != "critical":
    grown = run_growth(
        growth_variants(CONFIG, args.methods or sizes["growth_methods"],
                        args.schemes or _default_schemes(args.local),
                        args.local),
        protocol, out, epochs=args.growth_epochs or sizes["growth_epochs"],
        target=args.target, checkpoint_ratio=CONFIG["checkpoint_ratio"],
        **shared)
    print()
    print(growth_table(grown))
    runs += sum(len(s["runs"]) for s in grown)
  print(f"\n{runs} runs in {time.perf_counter() - start:.0f}s on "
        f"{report.machine_line()}; results in {out}/")


if __name__ == "__main__":
  main()
