"""The language-model and click-through workloads: data, models, metrics and
both benchmarks end to end at a tiny size."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks import ctr, data, language_model, models, sweep, train


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("NORMOPT_CACHE", str(tmp_path_factory.getbasetemp()))


def test_corpus_is_split_by_file_and_fingerprinted():
  splits = data.corpus_files()
  names = [set(f.name for f in files) for files in splits.values()]
  assert all(names) and not (names[0] & names[1] or names[0] & names[2]
                             or names[1] & names[2])
  info = data.corpus_info()
  assert info == data.corpus_info() and len(info["sha256"]) == 64
  assert info["train_bytes"] > 3 * info["validation_bytes"] > 0


def test_byte_windows_predict_the_next_byte():
  d = data.python_source(num_samples=10)
  raw = b"".join(f.read_bytes() for f in data.corpus_files()["train"])
  expected = np.frombuffer(raw[:10 * 64 + 1], np.uint8)
  np.testing.assert_array_equal(d.x_train.ravel(), expected[:-1])
  np.testing.assert_array_equal(d.y_train.ravel(), expected[1:])
  assert d.x_validation.shape == d.x_test.shape == (data.HELD_OUT_WINDOWS, 64)
  assert d.num_classes == 256


def test_unigram_perplexity_is_add_one_smoothed_frequencies():
  train_targets = np.array([[0, 0, 1]])
  # p(0) = 3/259, p(1) = 2/259: perplexity exp(-(log p0 + log p1) / 2)
  want = math.exp(-(math.log(3 / 259) + math.log(2 / 259)) / 2)
  assert data.unigram_perplexity(train_targets, np.array([0, 1])) == (
      pytest.approx(want, rel=1e-12))


def test_click_log_has_rare_ids_and_few_clicks():
  d = data.click_log(num_samples=20_000)
  assert len(d.y_train) == 16_000 and len(d.y_validation) == len(d.y_test)
  assert 0.02 < d.y_train.mean() < 0.07
  field = d.x_train[:, 0]
  counts = np.bincount(field)
  counts = counts[counts > 0]
  assert counts.max() > 50 * np.median(counts)  # Zipf: a head and a tail
  offsets = d.x_train // data.CLICK_VOCABULARY
  np.testing.assert_array_equal(offsets, np.arange(data.CLICK_FIELDS)[None]
                                + 0 * offsets)


def test_deepfm_is_first_order_plus_pairwise_plus_mlp():
  model = models.make("deepfm", (data.CLICK_FIELDS,), 2, 0)
  model.first_order.embedding[...] = jax.random.normal(
      jax.random.PRNGKey(1), model.first_order.embedding.shape)
  ids = np.random.default_rng(0).integers(
      0, data.CLICK_FIELDS * data.CLICK_VOCABULARY, (5, data.CLICK_FIELDS))
  v = np.asarray(model.embed.embedding[...], np.float64)[ids]
  pairwise = sum(v[:, i] @ np.eye(v.shape[-1]) * v[:, j]
                 for i in range(v.shape[1]) for j in range(i + 1, v.shape[1]))
  pairwise = pairwise.sum(-1)
  h = v.reshape(5, -1)
  for layer in model.mlp:
    h = np.maximum(h @ np.asarray(layer.kernel[...], np.float64)
                   + np.asarray(layer.bias[...], np.float64), 0)
  z = (np.asarray(model.first_order.embedding[...], np.float64)[ids, 0].sum(1)
       + pairwise + (h @ np.asarray(model.head.kernel[...], np.float64))[:, 0]
       + float(model.head.bias[0]))
  logits = np.asarray(model(jnp.asarray(ids)))
  np.testing.assert_allclose(logits[:, 0], 0.0)
  np.testing.assert_allclose(logits[:, 1], z, rtol=1e-4, atol=1e-5)


def _lstm_reference(model, tokens):
  """A float64 NumPy LSTM (gates i, f, g, o; forget bias 1)."""
  sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
  x = np.asarray(model.embed.embedding[...], np.float64)[tokens]
  for layer in model.lstms:
    w_in = np.asarray(layer.inputs.kernel[...], np.float64)
    b_in = np.asarray(layer.inputs.bias[...], np.float64)
    w_rec = np.asarray(layer.recurrent.kernel[...], np.float64)
    h = np.zeros((x.shape[0], layer.width))
    c = np.zeros_like(h)
    outputs = []
    for t in range(x.shape[1]):
      i, f, g, o = np.split(x[:, t] @ w_in + b_in + h @ w_rec, 4, axis=-1)
      c = sigmoid(f + 1) * c + sigmoid(i) * np.tanh(g)
      h = sigmoid(o) * np.tanh(c)
      outputs.append(h)
    x = np.stack(outputs, 1)
  return (x @ np.asarray(model.head.kernel[...], np.float64)
          + np.asarray(model.head.bias[...], np.float64))


def test_lstm_matches_a_float64_reference():
  model = models.make("lstm", (7,), 256, 0)
  tokens = np.random.default_rng(0).integers(0, 256, (3, 7))
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(tokens))),
                             _lstm_reference(model, tokens), rtol=2e-4,
                             atol=2e-5)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_language_models_are_causal(name):
  model = models.make(name, (16,), 256, 0)
  tokens = np.random.default_rng(0).integers(0, 256, (2, 16))
  changed = tokens.copy()
  changed[:, 9:] = (changed[:, 9:] + 1) % 256
  a, b = (np.asarray(model(jnp.asarray(t))) for t in (tokens, changed))
  np.testing.assert_allclose(a[:, :9], b[:, :9], rtol=1e-5, atol=1e-6)
  assert not np.allclose(a[:, 9:], b[:, 9:])


def test_auc_is_scikit_learns_and_nonfinite_scores_chance():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  z = labels + rng.normal(size=200)
  logits = np.stack([np.zeros(200), z], -1)
  # the Mann-Whitney statistic: P(score of a click > score of a non-click)
  pos, neg = z[labels == 1], z[labels == 0]
  want = np.mean(pos[:, None] > neg[None, :])
  assert ctr.auc(logits, labels)["auc"] == pytest.approx(want, rel=1e-12)
  logits[3, 1] = np.nan
  assert ctr.auc(logits, labels) == {"auc": 0.5}


def test_muon_views_leave_embeddings_and_head_to_adamw():
  from optax.contrib import MuonDimensionNumbers as MDN
  model = models.make("transformer", (8,), 256, 0)
  _, params = nnx.split(model)
  dims = train.muon_dimension_numbers(model)(params)
  flat = dict(zip(train.leaf_paths(params), jax.tree.leaves(
      dims, is_leaf=lambda d: d is None or isinstance(d, MDN))))
  assert not any(v for k, v in flat.items() if "embed" in k or "head" in k)
  assert any(v == MDN(0, 1) for k, v in flat.items() if "up" in k)
  assert any(v == MDN((0,), (1, 2)) for k, v in flat.items() if "query" in k)
  assert not any(v for k, v in flat.items() if "bias" in k)
  # The flattened view (normopt's before dimension numbers, kept to measure
  # it): q/k/v as (in·heads, head_dim), their biases and the positions too.
  old = train.muon_dimension_numbers(model, "flattened")(params)
  flat = dict(zip(train.leaf_paths(params), jax.tree.leaves(
      old, is_leaf=lambda d: d is None or isinstance(d, MDN))))
  assert not any(v for k, v in flat.items() if "embed" in k or "head" in k)
  assert any(v == MDN((0, 1), 2) for k, v in flat.items()
             if "query" in k and "kernel" in k)
  assert any(v == MDN((0,), 1) for k, v in flat.items()
             if "query" in k and "bias" in k)
  assert flat["['positions']"] == MDN((0,), 1)
  with pytest.raises(ValueError, match="muon_view"):
    train.muon_dimension_numbers(model, "rows")


def test_clip_norm_clips_before_the_method():
  config = train.Config(method="msgd", clip_norm=0.5, beta=0.0,
                        weight_decay=0.0, learning_rate=1.0,
                        schedule="constant")
  plan = train.Plan(10, 8, lambda c: c // 10, None)
  tx = train.make_optimizer(config, plan)
  g = {"w": jnp.full((4,), 3.0)}
  updates, _ = tx.update(g, tx.init(g), g)
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.25, rtol=1e-6)


def test_perplexity_objective_prefers_the_lower():
  runs = lambda v, t: [{"val_perplexity": v, "test_perplexity": t}]  # noqa
  assert sweep.PERPLEXITY.score(runs(5.0, 0)) > sweep.PERPLEXITY.score(
      runs(6.0, 0))
  assert sweep.PERPLEXITY.score(runs(math.inf, 0)) == -math.inf
  a = sweep.Tuned(1.0, 0.0, 5.0, 0.1, False, 1.0, [1.0], {})
  b = sweep.Tuned(1.0, 0.0, 6.0, 0.1, False, 1.0, [1.0], {})
  assert sweep.verdict(a, b, higher_is_better=False) == "beats"
  assert sweep.verdict(a, b) == "behind"


def test_dataset_validation_split_cannot_be_doubled():
  with pytest.raises(ValueError, match="own validation split"):
    train.load_data(train.Config(dataset="click_log", num_samples=2000,
                                 validation=10))


def _tiny(monkeypatch, module):
  monkeypatch.setitem(module.CONFIG, "quick",
                      {"grid_size": 3, "seeds": [0], "max_widen": 0})


def test_language_model_benchmark_end_to_end(tmp_path, monkeypatch, capsys):
  _tiny(monkeypatch, language_model)
  language_model.main(["--out", str(tmp_path), "--methods", "sngm",
                       "--batch_sizes", "8", "--num_samples", "32",
                       "--epochs", "2"])
  records = json.loads((tmp_path / "results.json").read_text())
  assert len(records) == 2 * 3  # models x grid
  for r in records:
    for key in ("method", "model", "batch_size", "learning_rate", "seed",
                "val_perplexity", "test_perplexity", "unigram_perplexity",
                "python", "corpus_sha256"):
      assert key in r, key
    assert r["val_perplexity"] == pytest.approx(
        math.exp(r["validation_loss"]))
    assert len(r["history"]) == 2 and "validation_loss" in r["history"][0]
  for model in ("lstm", "transformer"):
    assert (tmp_path / model / "perplexity_vs_batch.png").exists()
    assert (tmp_path / model / "curves.png").exists()
  assert json.loads((tmp_path / "corpus.json").read_text()) == (
      data.corpus_info())
  assert "test perplexity per byte" in capsys.readouterr().out


def test_ctr_benchmark_end_to_end(tmp_path, monkeypatch, capsys):
  _tiny(monkeypatch, ctr)
  ctr.main(["--out", str(tmp_path), "--methods", "sngm", "adamw",
            "--batch_sizes", "64", "256", "--num_samples", "5000"])
  records = json.loads((tmp_path / "results.json").read_text())
  assert len(records) == 2 * 2 * 3
  for r in records:
    assert 0.0 <= r["test_auc"] <= 1.0 and 0.0 <= r["validation_auc"] <= 1.0
    assert {"method", "batch_size", "learning_rate", "seed"} <= set(r)
  assert max(r["validation_auc"] for r in records) > 0.55
  assert (tmp_path / "auc_vs_batch.png").exists()
  assert "test AUC" in capsys.readouterr().out


_TOKENS = np.arange(16).reshape(2, 8)


@pytest.mark.parametrize("name,shape,classes,x,y", [
    ("lstm", (8,), 256, _TOKENS, _TOKENS + 1),
    ("transformer", (8,), 256, _TOKENS, _TOKENS + 1),
    ("deepfm", (data.CLICK_FIELDS,), 2, np.arange(32).reshape(2, 16) * 7,
     np.array([0, 1]))])
def test_every_workload_model_learns_a_little(name, shape, classes, x, y):
  """A few Adam steps lower the training loss of each new model."""
  graphdef, params = nnx.split(models.make(name, shape, classes, 0))
  loss_fn, _ = train._model_fns(graphdef)
  x, y = jnp.asarray(x), jnp.asarray(y)
  tx = optax.adam(1e-2)
  state = tx.init(params)
  first = float(loss_fn(params, x, y))

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(20):
    params, state = step(params, state)
  assert float(loss_fn(params, x, y)) < 0.9 * first
