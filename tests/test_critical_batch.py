"""The critical-batch study (benchmarks.critical_batch): its pieces on
made-up numbers (checkpoints, steps to target, the S_min/B_crit fit and its
bootstrap, the stopping rule, the claim and the growth verdicts), and both
parts end to end on a tiny problem, with the population trainer's
checkpoints and measured growth."""

import itertools
import json
import math

import numpy as np
import pytest

from benchmarks import critical_batch, sweep, train


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("NORMOPT_CACHE", str(tmp_path_factory.getbasetemp()))


def test_checkpoint_steps_are_geometric_and_end_at_the_last_step():
  steps = critical_batch.checkpoint_steps(1000, 1.1)
  assert steps[0] == 1 and steps[-1] == 1000
  assert steps == sorted(set(steps))
  assert all(b / a <= 2 for a, b in itertools.pairwise(steps))
  assert all(b <= 1.1 * a + 1 for a, b in itertools.pairwise(steps))
  with pytest.raises(ValueError):
    critical_batch.checkpoint_steps(10, 1.0)


def test_steps_to_target_is_the_first_crossing_in_optimizer_steps():
  checkpoints = [{"optimizer_step": s, "acc": a}
                 for s, a in [(1, 0.1), (4, 0.5), (9, 0.91), (20, 0.85)]]
  assert critical_batch.steps_to(checkpoints, "acc", 0.9) == 9
  assert critical_batch.steps_to(checkpoints, "acc", 0.95) == math.inf


def _summaries(method, s_min, b_crit, batch_sizes, seeds=3, noise=0.0,
               lost=()):
  rng = np.random.default_rng(0)
  out = []
  for b in batch_sizes:
    steps = s_min * (1 + b_crit / b)
    runs = [{"learning_rate": 1.0, "seed": s,
             "test_steps": math.inf if b in lost else
             steps * (1 + noise * rng.normal())} for s in range(seeds)]
    out.append({"method": method, "batch_size": b, "learning_rate": 1.0,
                "runs": runs})
  return out


def test_fit_recovers_s_min_and_b_crit_with_a_seed_bootstrap():
  batches = [32, 128, 512, 2048, 8192]
  exact = _summaries("sngm", 40.0, 600.0, batches, lost=(8192,))
  fit = critical_batch.fit_with_bootstrap(exact, "sngm", repeats=50)
  assert fit["not_reached"] == [8192] and fit["batch_sizes"] == batches[:-1]
  np.testing.assert_allclose([fit["s_min"], fit["b_crit"]], [40, 600],
                             rtol=1e-9)
  assert fit["b_crit_std"] < 1e-6  # identical seeds: nothing to resample
  noisy = critical_batch.fit_with_bootstrap(
      _summaries("sngm", 40.0, 600.0, batches, noise=0.1), "sngm",
      repeats=200)
  assert 0 < noisy["b_crit_std"] < 300
  assert abs(noisy["b_crit"] - 600) < 3 * noisy["b_crit_std"] + 100
  few = critical_batch.fit_with_bootstrap(exact[:2], "sngm")
  assert few["b_crit"] is None


def test_claim_needs_seeds_and_a_gap_beyond_the_spread():
  def fit(b_crit, std, seeds=3):
    return {"b_crit": b_crit, "b_crit_std": std, "seeds": seeds}
  assert "larger than" in critical_batch.claim(
      {"sngm": fit(900, 50), "msgd": fit(500, 60)})
  assert "level with" in critical_batch.claim(
      {"sngm": fit(600, 150), "msgd": fit(500, 60)})
  assert "smaller than" in critical_batch.claim(
      {"sngm": fit(300, 50), "msgd": fit(500, 60)})
  assert "One seed" in critical_batch.claim(
      {"sngm": fit(900, 0, 1), "msgd": fit(500, 0, 1)})


def test_stopper_waits_for_every_seed_then_the_margin():
  until = critical_batch.stopper(0.9, seeds=2, margin=1.5,
                                 best_so_far=math.inf)
  steps = np.array([10, 20, 30])
  # two learning rates x two seeds; lr 0 has both seeds there at step 20
  val = np.array([[0.5, 0.95, 0.95], [0.5, 0.92, 0.95],
                  [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
  assert until(steps, {"validation_accuracy": val, "test_accuracy": val})
  assert not until(steps[:2], {"validation_accuracy": val[:, :2],
                               "test_accuracy": val[:, :2]})
  one_seed_late = val.copy()
  one_seed_late[1] = [0.5, 0.5, 0.5]
  assert not until(steps, {"validation_accuracy": one_seed_late,
                           "test_accuracy": one_seed_late})
  assert critical_batch.stopper(0.9, 2, 1.5, best_so_far=10)(
      steps, {"validation_accuracy": one_seed_late,
              "test_accuracy": one_seed_late})


def test_steps_objective_picks_the_fewest_steps_and_does_not_widen_blind():
  def evaluate(lrs):
    return {lr: [{"validation_steps": 100 * (1 + math.log(lr / 0.4) ** 2),
                  "test_steps": 110.0}] for lr in lrs}
  tuned = sweep.tune(evaluate, 0.1, sweep.Protocol(grid_size=3, seeds=(0,)),
                     critical_batch.STEPS)
  assert tuned.learning_rate == 0.4 and not tuned.on_edge
  assert tuned.mean == 110.0
  calls = []

  def never(lrs):
    calls.append(lrs)
    return {lr: [{"validation_steps": math.inf, "test_steps": math.inf}]
            for lr in lrs}
  blind = sweep.tune(never, 1.0, sweep.Protocol(grid_size=3, seeds=(0,)),
                     critical_batch.STEPS)
  assert len(calls) == 1 and math.isinf(blind.mean) and math.isnan(blind.std)


def test_growth_verdict_follows_the_rule():
  def cell(scheme, mean, std, steps, score=0.9):
    runs = [{"learning_rate": 1.0, "seed": s} for s in range(3)]
    settings = ({"batch_size": 32} if scheme.startswith("fixed") else
                {"batch_size": 32, "micro_batch": 32,
                 "measured_growth": scheme.startswith("measured")})
    return {"method": "sngm", "scheme": scheme, "mean": mean, "std": std,
            "settings": settings,
            "optimizer_steps": steps, "score": score, "learning_rate": 1.0,
            "final_batch": 256, "runs": runs}
  win = [cell("fixed 32", 0.95, 0.01, 1000), cell("ramp a", 0.945, 0.01, 500),
         cell("measured growth", 0.948, 0.01, 600)]
  assert critical_batch.growth_verdicts(win)["sngm"].startswith("win")
  too_few_saved = [*win[:2], cell("measured growth", 0.948, 0.01, 800)]
  assert critical_batch.growth_verdicts(too_few_saved)["sngm"].startswith(
      "no win")
  less_accurate = [*win[:2], cell("measured growth", 0.90, 0.01, 600)]
  assert critical_batch.growth_verdicts(less_accurate)["sngm"].startswith(
      "no win")


def test_seesaw_verdict_compares_with_its_base_schedule():
  def cell(scheme, mean, std, steps, **settings):
    return {"method": "sngm", "scheme": scheme, "mean": mean, "std": std,
            "settings": {"batch_size": 32, **settings},
            "optimizer_steps": steps, "score": mean,
            "runs": [{"learning_rate": 1.0, "seed": s} for s in range(3)],
            "learning_rate": 1.0}
  constant = cell("fixed 32", 0.99, 0.01, 1000)
  base = cell("fixed 32, cosine", 0.95, 0.01, 1000, schedule="cosine")
  seesaw = cell("seesaw", 0.945, 0.01, 600, schedule="cosine",
                micro_batch=32, batch_schedule="seesaw")
  verdicts = critical_batch.seesaw_verdicts([constant, base, seesaw])
  assert verdicts["sngm"].startswith("holds") and "40% fewer" in verdicts[
      "sngm"]
  worse = {**seesaw, "mean": 0.9}
  assert critical_batch.seesaw_verdicts([base, worse])["sngm"].startswith(
      "does not hold")
  # Seesaw and its base stay out of the measured-growth rule.
  assert critical_batch.growth_verdicts([constant, base, seesaw]) == {}


_TINY = dict(dataset="digits", model="mlp", validation=200,
             schedule="constant", weight_decay=1e-4)


def test_population_checkpoints_stop_early_and_count_optimizer_steps():
  config = train.Config(method="sngm", batch_size=32, epochs=6, **_TINY)
  records = train.train_population(
      config, [0.05, 0.2], [0], eval_at=[1, 5, 20, 40, 80],
      until=lambda steps, values: steps[-1] >= 40)
  for r in records:
    assert [c["step"] for c in r["checkpoints"]] == [1, 5, 20, 40]
    assert [c["optimizer_step"] for c in r["checkpoints"]] == [1, 5, 20, 40]
    assert r["epochs_trained"] < 6
    assert all(0 <= c["validation_accuracy"] <= 1 for c in r["checkpoints"])
    assert all(np.isfinite(c["trace"]) for c in r["checkpoints"])
  grown = train.train_population(
      train.Config(method="sngm", batch_size=8, micro_batch=8, max_batch=64,
                   batch_growth=2, measured_growth=True, epochs=2, **_TINY),
      [0.1], [0], eval_at=[10, 100, 300])
  steps = [c["optimizer_step"] for c in grown[0]["checkpoints"]]
  assert steps[0] == 10 and all(s <= p for s, p in zip(steps, [10, 100, 300]))
  assert grown[0]["final_batch"] in (8, 16, 32, 64)


def test_both_parts_end_to_end(tmp_path):
  variants = [{"label": "sngm", "method": "sngm", "start": {"16": 0.2}}]
  protocol = sweep.Protocol(grid_size=3, ratio=2.0, max_widen=0, seeds=(0,))
  summaries, fits, rules = critical_batch.run(
      variants, [16, 32, 64], protocol, tmp_path, target=0.6,
      max_examples=20_000, checkpoint_ratio=1.3, **_TINY)
  assert {s["batch_size"] for s in summaries} == {16, 32, 64}
  assert all(r["checkpoints"] for s in summaries for r in s["runs"])
  text = critical_batch.tables(summaries, fits, rules)
  assert "S_min" in text and "sngm" in text
  assert (tmp_path / "critical_batch.png").exists()
  assert (tmp_path / "summary.json").exists()
  schemes = {"growth": {"schemes": [
      {"label": "fixed 8", "start_batch": 8, "settings": {"batch_size": 8}},
      {"label": "ramp x2 per epoch", "start_batch": 8, "settings": {
          "batch_size": 8, "micro_batch": 8, "batch_growth": 2,
          "max_batch": 32}},
      {"label": "measured growth", "start_batch": 8, "settings": {
          "batch_size": 8, "micro_batch": 8, "batch_growth": 2,
          "max_batch": 32, "measured_growth": True}},
      {"label": "fixed 8, cosine", "start_batch": 8, "settings": {
          "batch_size": 8, "schedule": "cosine"}},
      {"label": "seesaw", "start_batch": 8, "settings": {
          "batch_size": 8, "micro_batch": 8, "max_batch": 32,
          "schedule": "cosine", "batch_schedule": "seesaw"}}]},
      "variants": variants}
  grown = critical_batch.run_growth(
      critical_batch.growth_variants(schemes, ["sngm"]), protocol, tmp_path,
      epochs=1, target=0.6, checkpoint_ratio=1.3, **_TINY)
  assert [s["scheme"] for s in grown] == [
      "fixed 8", "ramp x2 per epoch", "measured growth", "fixed 8, cosine",
      "seesaw"]
  assert grown[0]["optimizer_steps"] > grown[2]["optimizer_steps"]
  assert grown[3]["optimizer_steps"] > grown[4]["optimizer_steps"]
  table = critical_batch.growth_table(grown)
  assert "one seed, no verdict" in table and "sngm, Seesaw: one seed" in table
  assert (tmp_path / "growth.png").exists()


def test_growth_runs_merge_into_one_table_with_every_provenance(tmp_path):
  def cell(method, scheme, mean, steps, **settings):
    return {"method": method, "scheme": scheme, "mean": mean, "std": 0.01,
            "settings": {"batch_size": 32, **settings}, "score": mean,
            "optimizer_steps": steps, "test_steps": None, "seconds": 5.0,
            "learning_rate": 0.1, "grid": [0.05, 0.1, 0.2], "on_edge": False,
            "runs": [{"learning_rate": 0.1, "seed": s} for s in range(3)]}
  runs = {"old": [cell("sngm", "fixed 32", 0.95, 1000),
                  cell("sngm", "ramp", 0.96, 400, micro_batch=32)],
          "new": [cell("muon", "fixed 32", 0.97, 1000),
                  cell("sngm", "critical-batch warmup", 0.958, 300,
                       micro_batch=32, epoch_batches=[32, 64])]}
  for name, summaries in runs.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "growth.json").write_text(
        json.dumps({"summaries": summaries}))
    (tmp_path / name / "growth.md").write_text(
        f"| table |\n\nMade by `python -m x {name}` on a day.\n")
  merged = critical_batch.merge_growth(
      [tmp_path / "old" / "growth.json", tmp_path / "new" / "growth.json"],
      tmp_path / "out")
  assert [(s["method"], s["scheme"]) for s in merged] == [
      ("sngm", "fixed 32"), ("sngm", "ramp"),
      ("sngm", "critical-batch warmup"), ("muon", "fixed 32")]
  text = (tmp_path / "out" / "growth.md").read_text()
  assert "python -m x old" in text and "python -m x new" in text
  assert "- sngm, critical-batch warmup: win" in text
  assert "| 0.1 (0.05-0.2) | 3 |" in text
