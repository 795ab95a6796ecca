"""The local critical batch by branched runs (benchmarks.branched): the rule
and the warmup on made-up losses, the population trainer's branching
(``start``/``on_epoch``), the trainer's per-epoch batches with their
learning-rate coupling, and the measurement and its warmup scheme end to end
on a tiny problem."""

import json

import numpy as np
import pytest

from benchmarks import branched, critical_batch, sweep, train

_TINY = dict(dataset="digits", model="mlp", validation=200,
             schedule="constant", weight_decay=1e-4)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("NORMOPT_CACHE", str(tmp_path_factory.getbasetemp()))


def test_local_critical_batch_is_the_largest_batch_within_the_tolerance():
  batches = [32, 64, 128, 256]
  losses = np.array([
      [2.0, 2.5, 3.0, 3.5],       # at initialization: only the base
      [1.0, 1.01, 1.03, 1.2],     # 64 within 2%, 128 within 5%
      [0.5, 0.49, 0.6, 0.505],    # a non-monotone row: the largest counts
      [0.4, np.nan, 0.4, np.inf],  # non-finite losses never qualify
  ])
  assert branched.critical_batches(losses, batches, 0.02) == [32, 64, 256, 128]
  assert branched.critical_batches(losses, batches, 0.05) == [32, 128, 256, 128]
  assert branched.critical_batches(losses, batches, 0.0) == [32, 32, 64, 128]


def test_warmup_takes_powers_of_two_below_the_critical_batch_never_falling():
  critical = [5, 32, 100, 70, 512, 5000]
  assert branched.warmup_batches(critical, 32, 1024) == [
      32, 32, 64, 64, 512, 1024]
  assert branched.warmup_batches([40, 2000], 32, 256) == [32, 256]


def test_population_branches_from_a_given_state():
  config = train.Config(method="sngm", batch_size=32, epochs=2, **_TINY)
  states = []
  fresh = train.train_population(config, [0.1], [0, 1],
                                 on_epoch=lambda e, *s: states.append((e, s)))
  assert [e for e, _ in states] == [0, 1, 2]
  # from the initial state: the same run, bit for bit
  again = train.train_population(config, [0.1], [0, 1], start=states[0][1])
  assert [r["validation_loss"] for r in again] == [
      r["validation_loss"] for r in fresh]
  # from the trained state at another batch size, the copies go on from there
  later = train.train_population(
      train.Config(method="sngm", batch_size=64, epochs=1, **_TINY), [0.1],
      [0, 1], start=states[2][1])
  first = train.train_population(
      train.Config(method="sngm", batch_size=64, epochs=1, **_TINY), [0.1],
      [0, 1])
  for a, b in zip(later, first):
    assert a["validation_loss"] < b["validation_loss"]
  with pytest.raises(ValueError, match="start must stack 3 copies"):
    train.train_population(config, [0.1], [0, 1, 2], start=states[0][1])


@pytest.mark.parametrize("method,exponent", [("msgd", 1.0), ("sngm", 0.5)])
def test_epoch_batches_grow_the_batch_and_scale_the_rate(method, exponent):
  config = train.Config(method=method, batch_size=16, micro_batch=16,
                        epoch_batches=(16, 16, 64), epochs=4,
                        learning_rate=0.1, **_TINY)
  n = 1000
  plan = train.make_plan(config, n)
  used = n // 64 * 64
  assert plan.steps == used // 16
  per_epoch = [used // 16, used // 16, used // 64, used // 64]
  schedule = train.make_schedule(config, plan)
  step = 0
  for epoch, steps in enumerate(per_epoch):
    batch = (16, 16, 64, 64)[epoch]
    for k in (step, step + steps - 1):
      np.testing.assert_allclose(float(schedule(k)),
                                 0.1 * (batch / 16) ** exponent, rtol=1e-6)
    step += steps
  with pytest.raises(ValueError, match="micro_batch"):
    train.make_plan(train.Config(method=method, epoch_batches=(16, 32),
                                 **_TINY), n)
  with pytest.raises(ValueError, match="epoch_batches"):
    train.make_plan(train.Config(method=method, micro_batch=16,
                                 epoch_batches=(16, 0), **_TINY), n)


def test_measurement_and_its_warmup_end_to_end(tmp_path):
  settings = {"learning_rates": {"sngm": 0.1}, "multipliers": [1, 2, 4],
              "base_batch": 16, "epochs": 3, "tolerance": 0.02,
              "tolerances": [0.02, 0.1]}
  (result,) = branched.run(["sngm"], [0, 1], tmp_path, settings, **_TINY)
  assert np.shape(result["losses"]) == (3, 3, 2)
  assert np.isfinite(result["losses"]).all()
  assert len(result["b_simple"]) == 3 and min(result["b_simple"]) > 0
  assert set(result["critical"]) == {"0.02", "0.1"}
  for loose, tight in zip(result["critical"]["0.1"],
                          result["critical"]["0.02"]):
    assert loose >= tight
  assert result["warmup"] == sorted(result["warmup"])
  assert set(result["warmup"]) <= {16, 32, 64}
  assert (tmp_path / "local.png").stat().st_size > 0
  assert "| sngm | 2 |" in (tmp_path / "local.md").read_text()
  assert "python -m benchmarks.branched" in (tmp_path / "local.md").read_text()

  schemes = {"variants": [{"method": "sngm", "start": {"16": 0.1}}],
             "growth": {"schemes": [
                 {"label": "fixed 16", "start_batch": 16,
                  "settings": {"batch_size": 16}},
                 {"label": "critical-batch warmup", "start_batch": 16,
                  "settings": {"batch_size": 16, "micro_batch": 16,
                               "max_batch": 64,
                               "epoch_batches": "measured"}}]}}
  with pytest.raises(ValueError, match="--local"):
    critical_batch.growth_variants(schemes, ["sngm"])
  with pytest.raises(ValueError, match="no warmup for msgd"):
    critical_batch.growth_variants(schemes, ["msgd"],
                                   local=tmp_path / "local.json")
  variants = critical_batch.growth_variants(schemes, ["sngm"],
                                            local=tmp_path / "local.json")
  assert variants[1]["settings"]["epoch_batches"] == tuple(result["warmup"])
  saved = json.loads((tmp_path / "local.json").read_text())
  assert saved["methods"][0]["warmup"] == result["warmup"]
  protocol = sweep.Protocol(grid_size=3, ratio=2.0, max_widen=0, seeds=(0,))
  grown = critical_batch.run_growth(variants, protocol, tmp_path, epochs=3,
                                    target=0.6, checkpoint_ratio=1.3, **_TINY)
  fixed, warm = grown
  n = train.training_examples(train.Config(**_TINY))
  largest = max(result["warmup"])
  assert fixed["optimizer_steps"] == 3 * (n // 16)
  assert warm["optimizer_steps"] == sum(
      n // largest * largest // b for b in result["warmup"])


def test_the_training_example_takes_epoch_batches_from_flags():
  from benchmarks import main
  config, _ = main.parse_config([
      "--dataset", "digits", "--model", "mlp", "--method", "sngm",
      "--schedule", "constant", "--batch_size", "16", "--micro_batch", "16",
      "--epoch_batches", "16", "32", "--epochs", "2"])
  assert config.epoch_batches == (16, 32)
  result = train.train_and_evaluate(config)
  assert result["test_accuracy"] > 0.5
  n = train.training_examples(config)
  assert result["passes_per_epoch"] == n // 32 * 32 // 16
