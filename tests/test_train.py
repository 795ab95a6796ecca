"""The training example and the main command, at tiny sizes."""

import dataclasses
import functools
import json
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from benchmarks import data, main, train


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("NORMOPT_CACHE", str(tmp_path_factory.getbasetemp()))


@pytest.mark.parametrize("method", train.method_names())
def test_every_method_trains_digits_mlp(method, tmp_path):
  lr = {"msgd": 0.1, "optax_lars": 5.0, "lars": 5.0, "clars": 5.0}.get(
      method, 0.05)
  config = train.Config(dataset="digits", model="mlp", method=method,
                        learning_rate=lr, batch_size=64, epochs=2,
                        trust_coefficient=0.01)
  result = train.train_and_evaluate(config, tmp_path)
  assert 0.0 <= result["test_accuracy"] <= 1.0
  assert result["test_accuracy"] > 0.5, result["test_accuracy"]
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["method"] == method and len(saved["history"]) == 2
  assert (tmp_path / "metrics.csv").exists() and (tmp_path / "curves.png").exists()


def _tiny_problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
            "b": jnp.zeros(3, jnp.float32)}
  x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 8))

  def loss_fn(p, x, y, probes=None):
    logits = (x @ p["w"] + p["b"] if probes is None else normopt.probed_dense(
        x, p["w"], p["b"], probes["w"], probes["b"]))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return params, (x, y), loss_fn


def test_train_step_is_one_update_of_the_batch_gradient():
  params, batch, loss_fn = _tiny_problem()
  tx = normopt.sngm(0.1)
  new, _, loss = jax.jit(functools.partial(
      train.train_step, tx=tx, loss_fn=loss_fn))(params, tx.init(params), batch)
  g = jax.grad(loss_fn)(params, *batch)
  u, _ = tx.update(g, tx.init(params), params)
  chex.assert_trees_all_close(new, optax.apply_updates(params, u), rtol=1e-6)
  np.testing.assert_allclose(float(loss), float(loss_fn(params, *batch)),
                             rtol=1e-6)


@pytest.mark.parametrize("probed", [False, True])
def test_train_step_feeds_clars_the_per_example_norms(probed):
  params, batch, loss_fn = _tiny_problem(1)
  tx = normopt.clars(1.0, trust_coefficient=0.1, mask=True)
  new, _, _ = train.train_step(params, tx.init(params), batch, tx=tx,
                               loss_fn=loss_fn, clars_norms=True, probed=probed)
  _, g, norms = normopt.per_example_block_norms(
      lambda p, b: loss_fn(p, *b), params, batch)
  u, _ = tx.update(g, tx.init(params), params, per_example_norms=norms)
  chex.assert_trees_all_close(new, optax.apply_updates(params, u), rtol=1e-5)


def test_history_logs_telemetry_per_layer():
  result = train.train_and_evaluate(train.Config(
      dataset="digits", model="mlp", method="lars", epochs=1, batch_size=64,
      learning_rate=1.0, mask_all=False))
  logged = result["history"][0]["telemetry"]
  assert 0 < logged["trust_ratio_0/ratios['hidden']['kernel']"] < 1
  assert normopt.TRUST_STATUS[int(
      logged["trust_ratio_0/status['hidden']['bias']"])] == "masked_out"


def test_noise_scale_logged_per_epoch_globally_and_per_layer(tmp_path):
  result = train.train_and_evaluate(train.Config(
      dataset="digits", model="mlp", method="sngm", epochs=2, batch_size=64,
      noise_scale=True), tmp_path)
  for h in result["history"]:
    logged = h["telemetry"]
    assert np.isfinite(logged["noise_scale_0/simple"])
    assert "noise_scale_0/block_simple['hidden']['kernel']" in logged
  assert (tmp_path / "curves.png").exists()
  with pytest.raises(ValueError, match="noise_scale"):
    train.train_and_evaluate(train.Config(dataset="digits", model="mlp",
                                          method="clars", noise_scale=True))


def test_optimizers_built_by_name_and_keywords():
  config = train.Config(method="lars", beta=0.8, weight_decay=0.0,
                        trust_coefficient=0.5, mask_all=True)
  params = {"w": jnp.full((2, 2), 2.0)}
  g = {"w": jnp.full((2, 2), 0.5)}
  tx = train.build_optimizer("lars", config, 0.1)
  want = normopt.lars(0.1, momentum=0.8, trust_coefficient=0.5, mask=True)
  chex.assert_trees_all_close(tx.update(g, tx.init(params), params)[0],
                              want.update(g, want.init(params), params)[0])
  with pytest.raises(ValueError, match="unknown method"):
    train.build_optimizer("adam", config, 0.1)


def test_cli_cnn1d_on_small_mnist1d(tmp_path, capsys):
  main.main(["--num_samples", "600", "--epochs", "1", "--batch_size", "32",
              "--method", "sngm", "--schedule", "polynomial",
              "--warmup_epochs", "0", "--workdir", str(tmp_path)])
  assert "test accuracy" in capsys.readouterr().out
  assert json.loads((tmp_path / "metrics.json").read_text())["model"] == "cnn1d"


@pytest.mark.parametrize("parallel", ["pmap", "mesh", "sharded"])
@pytest.mark.parametrize("method", ["sngm", "clars", "nigt"])
def test_data_parallel_equals_one_device(method, parallel):
  """8 forced CPU devices (conftest) give the single-device parameters."""
  import jax
  assert jax.local_device_count() == 8
  base = dict(dataset="digits", model="mlp", method=method, batch_size=64,
              epochs=2, learning_rate=0.05, trust_coefficient=0.01)
  one = train.train_and_evaluate(train.Config(**base))
  many = train.train_and_evaluate(train.Config(**base, parallel=parallel))
  if parallel != "pmap":  # the run really was spread over the mesh
    kernel = many["params"]["hidden"]["kernel"][...]  # (64, 256)
    assert len(kernel.sharding.device_set) == 8
    # sharded: each device stores 1/8 of it; mesh: a full copy.
    shard_rows = kernel.addressable_shards[0].data.shape[0]
    assert shard_rows == (8 if parallel == "sharded" else 64)
  chex.assert_trees_all_close(many["params"], one["params"], rtol=1e-5,
                              atol=1e-6)


@pytest.mark.parametrize("method", ["sngm", "nigt"])
def test_resume_equals_uninterrupted(method, tmp_path):
  base = dict(dataset="digits", model="mlp", method=method, batch_size=64,
              epochs=3, learning_rate=0.05)
  straight = train.train_and_evaluate(train.Config(**base))
  train.train_and_evaluate(train.Config(**base, stop_after=1), tmp_path)
  resumed = train.train_and_evaluate(train.Config(**base, resume=True),
                                     tmp_path)
  chex.assert_trees_all_equal(resumed["params"], straight["params"])
  assert len(resumed["history"]) == 3
  assert resumed["history"] == straight["history"]


@pytest.mark.parametrize("method", ["sngm", "nigt", "qhm"])
def test_accumulated_micro_batches_equal_plain_batches(method):
  base = dict(dataset="digits", model="mlp", method=method, batch_size=64,
              epochs=2, learning_rate=0.05, schedule="sqrt_decay")
  plain = train.train_and_evaluate(train.Config(**base))
  accumulated = train.train_and_evaluate(train.Config(**base, micro_batch=16))
  chex.assert_trees_all_close(accumulated["params"], plain["params"],
                              rtol=1e-5, atol=1e-6)


def test_growing_batch_runs_and_caps(tmp_path):
  result = train.train_and_evaluate(train.Config(
      dataset="digits", model="mlp", method="qhm", batch_size=16,
      micro_batch=16, batch_growth=2, growth_interval=1, max_batch=64,
      epochs=4, learning_rate=0.1, schedule="constant"), tmp_path)
  assert result["test_accuracy"] > 0.5
  # 1437 examples -> 1408 used (22 batches of the cap 64) -> 88 passes.
  assert result["passes_per_epoch"] == 88


def test_measured_growth_grows_the_batch_and_logs_it(tmp_path):
  """--measured_growth: normopt.batch_growth with the noise scale measured
  on every micro-batch; the batch in force, the optimizer steps and the
  noise scale go to metrics.json each epoch."""
  result = train.train_and_evaluate(train.Config(
      dataset="digits", model="mlp", method="sngm", batch_size=8,
      micro_batch=8, batch_growth=2, max_batch=64, measured_growth=True,
      epochs=3, learning_rate=0.1, schedule="constant"), tmp_path)
  assert result["test_accuracy"] > 0.5
  batches = [h["batch_size"] for h in result["history"]]
  assert batches == sorted(batches) and set(batches) <= {8, 16, 32, 64}
  assert batches[-1] > 8  # the digits' noise scale is well above 8
  steps = [h["optimizer_steps"] for h in result["history"]]
  assert steps[-1] < 3 * result["passes_per_epoch"]
  assert all(h["noise_scale"] > 0 for h in result["history"])
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["history"][-1]["batch_size"] == batches[-1]
  for bad in ({"schedule": "cosine"}, {"method": "clars"},
              {"max_batch": None}):
    with pytest.raises(ValueError, match="measured_growth"):
      train.train_and_evaluate(train.Config(**{
          "dataset": "digits", "model": "mlp", "batch_size": 8,
          "micro_batch": 8, "max_batch": 64, "measured_growth": True,
          "schedule": "constant", "epochs": 1} | bad))


def test_seesaw_batch_schedule_grows_the_batch_with_the_cosine(tmp_path):
  """--batch_schedule seesaw: the cosine's halvings become batch doublings;
  every example is seen, in normopt.seesaw_schedule's number of steps."""
  config = train.Config(
      dataset="digits", model="mlp", method="sngm", batch_size=16,
      micro_batch=16, max_batch=64, batch_schedule="seesaw", epochs=4,
      learning_rate=0.1, schedule="cosine")
  result = train.train_and_evaluate(config, tmp_path)
  assert result["test_accuracy"] > 0.5
  batches = [h["batch_size"] for h in result["history"]]
  assert batches == sorted(batches) and batches[0] == 16 and batches[-1] == 64
  # 1437 examples -> 1424 used (89 batches of 16) -> 356 base steps.
  plan = train.make_plan(config, 1437)
  expected = normopt.seesaw_schedule(
      optax.cosine_decay_schedule(0.1, 356), 356, max_micro_batches=4)
  # The last step is applied only if its batch is complete.
  ks = [int(expected.micro_batches(n)) for n in range(expected.num_steps)]
  assert result["history"][-1]["optimizer_steps"] == expected.num_steps - (
      sum(ks) > 356)
  assert train.seesaw(config, plan).boundaries == expected.boundaries
  with pytest.raises(ValueError, match="seesaw"):
    train.train_and_evaluate(dataclasses.replace(config, max_batch=None))


def test_bad_arguments_are_clear():
  with pytest.raises(ValueError, match="unknown method"):
    train.train_and_evaluate(train.Config(dataset="digits", model="mlp",
                                          method="adagrad", epochs=1))
  with pytest.raises(ValueError, match="batch_size"):
    train.train_and_evaluate(train.Config(dataset="digits", model="mlp",
                                          batch_size=10**6, epochs=1))
  with pytest.raises(ValueError, match="unknown schedule"):
    train.train_and_evaluate(train.Config(dataset="digits", model="mlp",
                                          schedule="step", epochs=1))
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load("imagenet")
  with pytest.raises(ValueError, match="data_dir"):
    data.load("cifar10")
  with pytest.raises(ValueError, match="does not divide"):
    train.train_and_evaluate(train.Config(dataset="digits", model="mlp",
                                          batch_size=12, parallel="mesh",
                                          epochs=1))
  with pytest.raises(ValueError, match="not a multiple of the micro-batch"):
    train.train_and_evaluate(train.Config(dataset="digits", model="mlp",
                                          batch_size=24, micro_batch=16,
                                          epochs=1))
  with pytest.raises(ValueError, match="warmup_epochs"):
    train.train_and_evaluate(train.Config(dataset="digits", model="mlp",
                                          schedule="sqrt_decay",
                                          warmup_epochs=1, epochs=2))
  with pytest.raises(ValueError, match="cnn1d"):
    train.train_and_evaluate(train.Config(dataset="digits", model="cnn1d",
                                          epochs=1))


def _write_cifar(root, n_train=20, n_test=10):
  rng = np.random.default_rng(0)
  root.mkdir()
  for name, n in [("data_batch_1", n_train), ("test_batch", n_test)]:
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": list(rng.integers(0, 10, n))}
    with open(root / name, "wb") as f:
      pickle.dump(batch, f)


def test_cifar_reader(tmp_path):
  _write_cifar(tmp_path / "cifar")
  ds = data.cifar10(tmp_path / "cifar")
  assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (10, 32, 32, 3)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  np.testing.assert_allclose(ds.x_train.reshape(-1, 3).mean(0), 0.0, atol=1e-4)


def test_cifar_reader_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    data.cifar10(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="data_batch"):
    data.cifar10(tmp_path / "empty")
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "data_batch_1").write_bytes(b"not a pickle")
  (bad / "test_batch").write_bytes(b"not a pickle")
  with pytest.raises(ValueError, match="not a CIFAR-10"):
    data.cifar10(bad)


def test_resnet20_one_epoch_on_tiny_cifar(tmp_path):
  _write_cifar(tmp_path / "cifar", n_train=16, n_test=8)
  result = train.train_and_evaluate(train.Config(
      dataset="cifar10", data_dir=str(tmp_path / "cifar"), model="resnet20",
      method="sngm", batch_size=8, epochs=1))
  assert np.isfinite(result["final_train_loss"])


def test_increasing_batch_benchmark_writes_results(tmp_path):
  from benchmarks import increasing_batch
  increasing_batch.main(["--epochs", "2", "--num_samples", "600",
                         "--validation", "80", "--out", str(tmp_path)])
  records = json.loads((tmp_path / "results.json").read_text())
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert len(summary["summaries"]) == 5
  assert {r["variant"] for r in records} == {
      s["label"] for s in summary["summaries"]}
  assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in records)
  grown = [r for r in records if r["micro_batch"] == 32]
  assert grown and all(r["max_batch"] == 256 for r in grown)


def test_increasing_batch_reads_the_command_line(monkeypatch):
  """``python -m benchmarks.increasing_batch --full`` must reach the study."""
  from benchmarks import increasing_batch, large_batch
  seen = []
  monkeypatch.setattr(large_batch, "main", seen.append)
  monkeypatch.setattr("sys.argv", ["increasing_batch", "--full"])
  increasing_batch.main()
  assert seen == [["--config", "increasing_batch", "--full"]]


def test_step_speed_smoke(tmp_path, capsys):
  """Runs the benchmark on a tiny tree; checks the table, not the times."""
  from benchmarks.speed import step_speed
  out = tmp_path / "rows.json"
  step_speed.main(["--trees", "tiny", "--reps", "2", "--json", str(out),
                   "--train_step", "--width", "16"])
  rows = json.loads(out.read_text())
  methods = {r["method"] for r in rows}
  assert {"sngm", "optax sngm chain", "lars", "optax.lars", "axpy"} <= methods
  assert all(r["median_ms"] > 0 for r in rows)
  printed = capsys.readouterr().out
  assert "| tiny | sngm |" in printed and "optimizer share" in printed
  assert {r["method"] for r in rows if "optimizer_share" in r} == {
      "grad only", *step_speed.TRAIN_STEP_METHODS}


def test_per_example_speed_smoke(tmp_path, capsys):
  """Runs and prints its table; no timing is asserted."""
  from benchmarks.speed import per_example_speed
  out = tmp_path / "rows.json"
  per_example_speed.main(["--batch", "8", "--reps", "1", "--chunk", "4",
                          "--json", str(out)])
  assert "probed" in capsys.readouterr().out
  assert {r["path"] for r in json.loads(out.read_text())} == {
      "grad", "exact", "exact_chunked", "probed", "noise_scale_probed"}


def test_batched_ns_smoke(tmp_path, capsys):
  """Times Muon batched and one leaf at a time on a tiny tree; checks the
  table, not the times."""
  from benchmarks.speed import batched_ns
  out = tmp_path / "rows.json"
  batched_ns.main(["--trees", "tiny", "--reps", "2", "--json", str(out)])
  rows = json.loads(out.read_text())
  assert [r["variant"] for r in rows] == list(batched_ns.VARIANTS)
  assert rows[-1]["vs_one_by_one"] == 1.0
  assert "| tiny | as shipped |" in capsys.readouterr().out


def test_compile_time_smoke(tmp_path, capsys):
  """Times every method on a 4-leaf tree; checks the table and the ratios'
  bookkeeping, not the times."""
  from benchmarks.speed import compile_time
  out = tmp_path / "rows.json"
  compile_time.main(["--leaves", "4", "--json", str(out)])
  rows = json.loads(out.read_text())
  assert {r["method"] for r in rows} == set(compile_time.METHODS)
  lars = next(r for r in rows if r["method"] == "lars")
  optax_lars = next(r for r in rows if r["method"] == "optax.lars")
  assert lars["vs_optax"] == lars["total_s"] / optax_lars["total_s"]
  assert "| lamb |" in capsys.readouterr().out


def test_unit_ball_figure(tmp_path):
  from benchmarks import report
  report.plot_unit_balls(tmp_path / "balls.png")
  assert (tmp_path / "balls.png").stat().st_size > 1000
