"""The tuning protocol (benchmarks.sweep) and the population trainer.

The protocol's logic runs on made-up scores (no training): grid widening,
the interior-best rule, selection on the validation seed mean, seed
aggregation and the level/beats verdict. The population trainer is checked
against one-at-a-time training on a tiny problem.
"""

import dataclasses
import itertools
import json
import math
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import normopt
from benchmarks import large_batch, sweep, train


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("NORMOPT_CACHE", str(tmp_path_factory.getbasetemp()))


def _peaked(at: float, seeds=(0,), noise=0.0, test_offset=0.0):
  """An ``evaluate`` whose validation score peaks at learning rate ``at``;
  records every call's learning rates in ``calls``."""
  calls = []

  def evaluate(lrs):
    calls.append(list(lrs))
    return {lr: [{"learning_rate": lr, "seed": s,
                  "validation_accuracy": 0.9 - 0.1 * math.log(lr / at) ** 2
                  + noise * (s - 1),
                  "test_accuracy": 0.8 - 0.1 * math.log(lr / at) ** 2
                  + test_offset + noise * s}
                 for s in seeds] for lr in lrs}
  return evaluate, calls


def test_log_grid_is_centred_and_log_spaced():
  assert sweep.log_grid(1.0, 5, 2.0) == [0.25, 0.5, 1.0, 2.0, 4.0]
  assert sweep.log_grid(0.3, 3, 10.0) == [0.03, 0.3, 3.0]
  assert sweep.log_grid(1.0, 4, 2.0) == [0.5, 1.0, 2.0, 4.0]
  grid = sweep.log_grid(0.7, 7, 1.5)
  ratios = [b / a for a, b in itertools.pairwise(grid)]
  np.testing.assert_allclose(ratios, 1.5, rtol=1e-3)


def test_extend_continues_the_spacing():
  assert sweep.extend([1.0, 2.0, 4.0], "high", 2, 2.0) == [8.0, 16.0]
  assert sweep.extend([1.0, 2.0, 4.0], "low", 1, 2.0) == [0.5]


def test_interior_best_needs_no_widening():
  evaluate, calls = _peaked(at=1.0)
  result = sweep.tune(evaluate, 1.0, sweep.Protocol(grid_size=5))
  assert result.learning_rate == 1.0 and not result.on_edge
  assert calls == [[0.25, 0.5, 1.0, 2.0, 4.0]]


@pytest.mark.parametrize("at,center,side", [(20.0, 1.0, "high"),
                                            (0.02, 1.0, "low")])
def test_best_on_an_edge_widens_until_inside(at, center, side):
  evaluate, calls = _peaked(at=at)
  protocol = sweep.Protocol(grid_size=3, ratio=2.0, max_widen=10)
  result = sweep.tune(evaluate, center, protocol)
  assert not result.on_edge
  assert min(result.grid) < result.learning_rate < max(result.grid)
  # the chosen point is the grid point nearest the peak in log scale
  assert abs(math.log(result.learning_rate / at)) <= math.log(2.0) / 2 + 1e-9
  # each widening trains only the new points, beyond the edge it was on
  for new in calls[1:]:
    assert len(new) == 1
    assert (min(new) > max(calls[0])) == (side == "high")
  trained = [lr for call in calls for lr in call]
  assert len(trained) == len(set(trained)) == len(result.grid)


def test_widening_is_bounded_and_a_remaining_edge_is_flagged():
  evaluate, calls = _peaked(at=1e6)
  result = sweep.tune(evaluate, 1.0, sweep.Protocol(grid_size=3, max_widen=2))
  assert result.on_edge and result.learning_rate == max(result.grid)
  assert len(calls) == 3


def test_selection_uses_the_validation_seed_mean_not_the_test_set():
  # one lr has the best single seed, another the best mean
  runs = {1.0: [0.95, 0.55], 2.0: [0.80, 0.80], 4.0: [0.6, 0.6]}
  test = {1.0: 0.99, 2.0: 0.5, 4.0: 0.1}  # the test set would pick 1.0

  def evaluate(lrs):
    return {lr: [{"validation_accuracy": v, "test_accuracy": test.get(lr, 0),
                  "seed": s} for s, v in enumerate(runs.get(lr, [0, 0]))]
            for lr in lrs}
  result = sweep.tune(evaluate, 2.0, sweep.Protocol(grid_size=3))
  assert result.learning_rate == 2.0
  assert result.mean == 0.5 and result.score == 0.8


def test_seed_aggregation_is_mean_and_sample_std():
  evaluate, _ = _peaked(at=1.0, seeds=(0, 1, 2), noise=0.01)
  result = sweep.tune(evaluate, 1.0, sweep.Protocol(grid_size=3))
  tests = [r["test_accuracy"] for r in result.runs[1.0]]
  assert result.mean == pytest.approx(statistics.fmean(tests))
  assert result.std == pytest.approx(np.std(tests, ddof=1))
  assert len(result.runs[1.0]) == 3


def test_width_counts_learning_rates_within_a_point_of_the_best():
  scores = {0.25: 0.5, 0.5: 0.895, 1.0: 0.9, 2.0: 0.892, 4.0: 0.7}

  def evaluate(lrs):
    return {lr: [{"validation_accuracy": scores.get(lr, 0.0),
                  "test_accuracy": 0.0}] for lr in lrs}
  assert sweep.tune(evaluate, 1.0, sweep.Protocol()).width == 4.0


def _tuned(mean, std):
  return sweep.Tuned(1.0, mean, mean, std, False, 1.0, [1.0], {})


def test_verdict_needs_the_gap_to_exceed_the_spread():
  assert sweep.verdict(_tuned(0.95, 0.01), _tuned(0.90, 0.01)) == "beats"
  assert sweep.verdict(_tuned(0.90, 0.01), _tuned(0.95, 0.01)) == "behind"
  assert sweep.verdict(_tuned(0.95, 0.03), _tuned(0.93, 0.01)) == "level"


@pytest.mark.parametrize("kwargs", [{"grid_size": 2}, {"ratio": 1.0},
                                    {"max_widen": -1}, {"seeds": ()}])
def test_protocol_rejects_bad_sizes(kwargs):
  with pytest.raises(ValueError):
    sweep.Protocol(**kwargs)


def test_start_for_takes_the_nearest_batch_in_log_scale():
  starts = {"128": 0.1, "4096": 1.0}
  assert sweep.start_for(starts, 256) == 0.1
  assert sweep.start_for(starts, 2048) == 1.0
  assert sweep.start_for(starts, 8192) == 1.0


def test_study_table_and_best_variant_on_made_up_scores():
  peaks = {"a": 1.0, "b1": 0.1, "b2": 3.0}
  offsets = {"a": 0.0, "b1": -0.2, "b2": 0.05}

  def train_fn(*, method, batch_size, learning_rates, seeds, knob):
    return [{"method": method, "batch_size": batch_size, "learning_rate": lr,
             "seed": s, "validation_accuracy": 0.9 + offsets[knob]
             - 0.1 * math.log(lr / peaks[knob]) ** 2 + 0.001 * s,
             "test_accuracy": 0.8 + offsets[knob]
             - 0.1 * math.log(lr / peaks[knob]) ** 2 + 0.001 * s}
            for lr in learning_rates for s in seeds]
  variants = [
      {"label": "A", "method": "a", "settings": {"knob": "a"},
       "start": {"8": 1.0}},
      {"label": "B small", "method": "b", "settings": {"knob": "b1"},
       "start": {"8": 1.0}},
      {"label": "B large", "method": "b", "settings": {"knob": "b2"},
       "start": {"8": 1.0}}]
  lines = []
  summaries = sweep.study(variants, [8, 64], sweep.Protocol(
      grid_size=3, seeds=(0, 1, 2)), train_fn, log=lines.append)
  assert len(summaries) == 6 and lines
  assert all(not s["on_edge"] for s in summaries)
  assert all(r["variant"] == s["label"] for s in summaries for r in s["runs"])
  best = {(s["method"], s["batch_size"]): s["label"]
          for s in sweep.best_variants(summaries)}
  assert best == {("a", 8): "A", ("b", 8): "B large", ("a", 64): "A",
                  ("b", 64): "B large"}
  text = sweep.table(summaries)
  assert "B large" in text and "B small" not in text
  assert "batch 8: b leads, level with a" not in text  # gap 5 points > std
  assert "batch 8: b leads" in text
  assert "B small" in sweep.table(summaries, rows="label")
  one_seed = sweep.study(variants[:1], [8], sweep.Protocol(grid_size=3, seeds=(0,)),
                         train_fn, log=lines.append)
  assert "One seed per cell" in sweep.table(one_seed)


# The population trainer ------------------------------------------------------

_TINY = dict(dataset="digits", model="mlp", batch_size=64, epochs=2,
             weight_decay=1e-4)


@pytest.mark.parametrize("method", ["sngm", "lars", "clars", "nigt", "msgd"])
def test_population_matches_one_run_at_a_time(method):
  config = train.Config(method=method, validation=200, **_TINY)
  lrs, seeds = [0.05, 0.2], [0, 3]
  together = train.train_population(config, lrs, seeds)
  assert [(r["learning_rate"], r["seed"]) for r in together] == [
      (lr, s) for lr in lrs for s in seeds]
  for record in together:
    alone = train.train_and_evaluate(dataclasses.replace(
        config, learning_rate=record["learning_rate"], seed=record["seed"]))
    np.testing.assert_allclose(record["final_train_loss"],
                               alone["final_train_loss"], rtol=2e-4)
    for key in ("test_accuracy", "validation_accuracy"):
      assert abs(record[key] - alone[key]) <= 2 / 360, (key, record, alone)


def test_population_holds_out_validation_and_counts_divergence_as_chance():
  config = train.Config(method="msgd", validation=300, **_TINY)
  dataset, held_out = train.load_data(config)
  full, _ = train.load_data(dataclasses.replace(config, validation=0))
  assert len(held_out[1]) == 300
  assert len(dataset.y_train) + 300 == len(full.y_train)
  np.testing.assert_array_equal(held_out[1], full.y_train[-300:])
  records = train.train_population(config, [0.1, 1e6], [0])
  assert np.isfinite(records[0]["final_train_loss"])
  assert not np.isfinite(records[1]["final_train_loss"])
  assert records[1]["test_accuracy"] <= 0.1
  assert records[1]["validation_accuracy"] <= 0.1


@pytest.mark.parametrize("kwargs", [{"parallel": "pmap"},
                                    {"noise_scale": True}])
def test_population_rejects_what_it_does_not_do(kwargs):
  with pytest.raises(ValueError):
    train.train_population(train.Config(**_TINY, **kwargs), [0.1], [0])
  with pytest.raises(ValueError, match="learning rates"):
    train.train_population(train.Config(**_TINY), [0.0], [0])


@pytest.mark.parametrize("method", ["lars", "clars"])
def test_with_every_leaf_trust_ratioed_the_coefficient_only_rescales_lr(method):
  """Why the protocol tunes the trust coefficient for mask=None only: with
  mask=True, (lr, eta) and (lr * eta / eta', eta') take the same steps."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape),
                                              jnp.float32), params)
           for _ in range(4)]
  extra = {}
  if method == "clars":
    extra = {"per_example_norms": jnp.asarray([1.3, 1.7], jnp.float32)}

  def run(lr, eta):
    tx = getattr(normopt, method)(lr, trust_coefficient=eta, mask=True,
                                  weight_decay=1e-3, **(
                                      {"blocks": {"w": 0, "b": 1}}
                                      if method == "clars" else {}))
    p, state = params, tx.init(params)
    for g in grads:
      u, state = tx.update(g, state, p, **extra)
      p = jax.tree.map(lambda a, b: a + b, p, u)
    return p

  a, b = run(20.0, 1e-3), run(2.0, 1e-2)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_main_command_writes_one_record_per_run(tmp_path, capsys):
  large_batch.main(["--methods", "msgd", "sngm", "--batch_sizes", "32", "128",
                    "--epochs", "1", "--num_samples", "600", "--validation",
                    "80", "--out", str(tmp_path)])
  records = json.loads((tmp_path / "results.json").read_text())
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert {r["method"] for r in records} == {"msgd", "sngm"}
  for r in records:
    assert set(r) >= {"method", "batch_size", "learning_rate", "seed",
                      "test_accuracy", "validation_accuracy", "mask_all",
                      "trust_coefficient", "warmup_epochs", "variant"}
    assert 0.0 <= r["test_accuracy"] <= 1.0
  for s in summary["summaries"]:
    assert len(s["grid"]) >= 3
    assert s["on_edge"] or min(s["grid"]) < s["learning_rate"] < max(s["grid"])
  assert summary["protocol"]["grid_size"] == 3
  assert "| method | batch 32 | batch 128 |" in capsys.readouterr().out
  assert (tmp_path / "accuracy_vs_batch.png").stat().st_size > 0


@pytest.mark.parametrize("name", sorted(
    p.stem for p in (Path(__file__).parents[1] / "benchmarks" / "configs")
    .glob("*.json")))
def test_every_study_config_names_real_fields(name):
  """A typo in a study's JSON would otherwise surface minutes into a run."""
  from benchmarks import configs
  config = configs.load(name)
  fields = {f.name for f in dataclasses.fields(train.Config)}
  assert set(config["train"]) <= fields
  for variant in config.get("variants", []):
    assert set(variant.get("settings", {})) <= fields, variant["label"]
    assert variant["method"] in train.method_names(), variant["label"]
