"""Per-example block norms against a one-example-at-a-time float64 loop."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import normopt
from tests import reference


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def mlp_loss(params, batch):
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return jnp.mean(jax.nn.logsumexp(logits, -1)
                  - jnp.take_along_axis(logits, batch["y"][:, None], 1)[:, 0])


def cnn_loss(params, batch):
  x = batch["x"][..., None]  # (B, L, 1)
  y = jax.lax.conv_general_dilated(x, params["conv"], (2,), "SAME",
                                   dimension_numbers=("NWC", "WIO", "NWC"))
  y = jax.nn.relu(y + params["conv_bias"])
  pred = y.reshape(y.shape[0], -1) @ params["head"] + params["head_bias"]
  return jnp.mean((pred[:, 0] - batch["t"]) ** 2)


def _problem(kind, n=12, seed=0):
  rng = np.random.default_rng(seed)
  if kind == "mlp":
    params = {"w1": rng.standard_normal((5, 7)), "b1": rng.standard_normal(7),
              "w2": rng.standard_normal((7, 3)), "b2": np.zeros(3)}
    batch = {"x": rng.standard_normal((n, 5)), "y": rng.integers(0, 3, n)}
    return mlp_loss, jax.tree.map(jnp.asarray, params), jax.tree.map(
        jnp.asarray, batch)
  params = {"conv": rng.standard_normal((3, 1, 4)), "conv_bias": np.zeros(4),
            "head": rng.standard_normal((8 * 4, 1)), "head_bias": np.ones(1)}
  batch = {"x": rng.standard_normal((n, 16)), "t": rng.standard_normal(n)}
  return cnn_loss, jax.tree.map(jnp.asarray, params), jax.tree.map(
      jnp.asarray, batch)


def _loop_reference(loss, params, batch):
  """Each example on its own: grad, then float64 NumPy norms; then means."""
  n = jax.tree.leaves(batch)[0].shape[0]
  norms, grads, losses = [], [], []
  for i in range(n):
    one = jax.tree.map(lambda x, i=i: x[i:i + 1], batch)
    value, g = jax.value_and_grad(loss)(params, one)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]
    norms.append([reference.norm([leaf]) for leaf in leaves])
    grads.append(leaves)
    losses.append(float(value))
  return (np.mean(losses), [np.mean([g[k] for g in grads], 0)
                            for k in range(len(grads[0]))],
          np.mean(np.array(norms), 0))


def _assert_matches_loop(got, loss, params, batch):
  got_loss, got_grads, got_norms = got
  ref_loss, ref_grads, ref_norms = _loop_reference(loss, params, batch)
  np.testing.assert_allclose(float(got_loss), ref_loss, rtol=1e-6)
  for g, r in zip(jax.tree.leaves(got_grads), ref_grads):
    np.testing.assert_allclose(np.asarray(g), r, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(np.asarray(jax.tree.leaves(got_norms)),
                             ref_norms, rtol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("chunk_size", [None, 4, 1])
def test_matches_per_example_loop(kind, chunk_size):
  loss, params, batch = _problem(kind)
  got_loss, got_grads, got_norms = jax.jit(
      lambda p, b: normopt.per_example_block_norms(
          loss, p, b, chunk_size=chunk_size))(params, batch)
  _assert_matches_loop((got_loss, got_grads, got_norms), loss, params, batch)
  # The mean gradient is the ordinary gradient of the batch loss.
  _, direct = jax.value_and_grad(loss)(params, batch)
  for g, d in zip(jax.tree.leaves(got_grads), jax.tree.leaves(direct)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(d), rtol=1e-6,
                               atol=1e-12)


def test_chunk_bounds_the_per_example_buffers():
  """Only chunk-sized per-example gradients appear in the computation."""
  loss, params, batch = _problem("mlp", n=12)
  jaxpr = jax.make_jaxpr(lambda p, b: normopt.per_example_block_norms(
      loss, p, b, chunk_size=3))(params, batch)
  shapes = set()

  def walk(jx):
    for eqn in jx.eqns:
      for v in eqn.outvars:
        shapes.add(tuple(getattr(v.aval, "shape", ())))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jaxpr.jaxpr)
  assert (3, 5, 7) in shapes  # per-example gradients of w1, 3 at a time
  assert (12, 5, 7) not in shapes and (4, 3, 5, 7) not in shapes


def test_sub_batch_approximation_and_labels():
  loss, params, batch = _problem("mlp", n=12)
  _, grads, approx = normopt.per_example_block_norms(loss, params, batch,
                                                     num_examples=4)
  first4 = jax.tree.map(lambda x: x[:4], batch)
  _, _, exact4 = normopt.per_example_block_norms(loss, params, first4)
  np.testing.assert_allclose(np.asarray(jax.tree.leaves(approx)),
                             np.asarray(jax.tree.leaves(exact4)), rtol=1e-12)
  _, direct = jax.value_and_grad(loss)(params, batch)
  for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direct)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(d), rtol=1e-12)
  labels = {"w1": "hidden", "b1": "hidden", "w2": "out", "b2": "out"}
  _, _, by_label = normopt.per_example_block_norms(loss, params, batch,
                                                   blocks=labels)
  assert set(by_label) == {"hidden", "out"}


def test_bad_arguments():
  loss, params, batch = _problem("mlp", n=12)
  with pytest.raises(ValueError, match="chunk_size"):
    normopt.per_example_block_norms(loss, params, batch, chunk_size=5)
  with pytest.raises(ValueError, match="num_examples"):
    normopt.per_example_block_norms(loss, params, batch, num_examples=20)
  with pytest.raises(ValueError, match="leading axis"):
    normopt.per_example_block_norms(loss, params, {"x": batch["x"],
                                                   "y": batch["y"][:3]})


def _unfold(x, width, stride):
  """(B, L, C) -> (B, positions, width*C) patches, 'SAME'-style padding."""
  pad = width // 2
  x = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
  length = (x.shape[1] - width) // stride + 1
  idx = stride * jnp.arange(length)[:, None] + jnp.arange(width)[None, :]
  return x[:, idx, :].reshape(x.shape[0], length, -1)


def unfold_loss(params, batch, probes=None):
  """Two unfolded convolutions (per-example gradients: materialised, then
  Gram branch), a LayerNorm-style scale through `probed`, a dense head."""
  dense = (normopt.probed_dense if probes is not None else
           lambda x, k, b, *_: x @ k + b)
  pr = probes or {k: None for k in params}
  x = batch["x"][..., None]
  h = jnp.tanh(dense(_unfold(x, 3, 2), params["c1"], params["c1b"],
                     pr["c1"], pr["c1b"]))         # T=8, in=3, out=16
  h = jnp.tanh(dense(_unfold(h, 3, 2), params["c2"], params["c2b"],
                     pr["c2"], pr["c2b"]))         # T=4, in=48, out=16
  scale = lambda p, v: v * p  # noqa: E731
  h = (normopt.probed(scale)(params["s"], h, pr["s"]) if probes is not None
       else scale(params["s"], h))
  pred = dense(h.reshape(h.shape[0], -1), params["head"], params["hb"],
               pr["head"], pr["hb"])               # T=1: outer product
  return jnp.mean((pred[:, 0] - batch["t"]) ** 2)


def _unfold_problem(n=12, seed=1):
  rng = np.random.default_rng(seed)
  shapes = {"c1": (3, 16), "c1b": (16,), "c2": (48, 16), "c2b": (16,),
            "s": (16,), "head": (64, 2), "hb": (2,)}
  params = {k: jnp.asarray(rng.standard_normal(s)) for k, s in shapes.items()}
  batch = {"x": jnp.asarray(rng.standard_normal((n, 16))),
           "t": jnp.asarray(rng.standard_normal(n))}
  return params, batch


def _probed_mlp_loss(params, batch, probes):
  h = jnp.tanh(normopt.probed_dense(batch["x"], params["w1"], params["b1"],
                                    probes["w1"], probes["b1"]))
  logits = normopt.probed_dense(h, params["w2"], params["b2"], probes["w2"],
                                probes["b2"])
  return jnp.mean(jax.nn.logsumexp(logits, -1)
                  - jnp.take_along_axis(logits, batch["y"][:, None], 1)[:, 0])


@pytest.mark.parametrize("kind", ["mlp", "unfold"])
def test_probed_path_matches_per_example_loop(kind):
  if kind == "mlp":
    _, params, batch = _problem("mlp")
    plain, probed = mlp_loss, _probed_mlp_loss
  else:
    params, batch = _unfold_problem()
    plain, probed = unfold_loss, unfold_loss
  got_loss, got_grads, got_norms = jax.jit(
      lambda p, b: normopt.per_example_block_norms(probed, p, b, probed=True)
  )(params, batch)
  _assert_matches_loop((got_loss, got_grads, got_norms), plain, params, batch)
  # Same numbers as the exact path, also for labelled blocks.
  labels = {k: k[0] for k in params}
  _, _, exact = normopt.per_example_block_norms(plain, params, batch,
                                                blocks=labels)
  _, _, fast = normopt.per_example_block_norms(probed, params, batch,
                                               blocks=labels, probed=True)
  for k in exact:
    np.testing.assert_allclose(float(fast[k]), float(exact[k]), rtol=1e-9)


def test_probed_path_builds_no_per_example_model_gradients():
  """Dense layers use ||a|| ||d|| and Gram matrices: no (B, in, out) array."""
  _, params, batch = _problem("mlp", n=12)
  jaxpr = jax.make_jaxpr(lambda p, b: normopt.per_example_block_norms(
      _probed_mlp_loss, p, b, probed=True))(params, batch)
  shapes = {tuple(getattr(v.aval, "shape", ())) for eqn in jaxpr.jaxpr.eqns
            for v in eqn.outvars}
  assert not shapes & {(12, 5, 7), (12, 7, 3)}


def test_probed_path_errors_and_dtypes():
  _, params, batch = _problem("mlp", n=12)

  def forgets_b2(p, b, probes):
    h = jnp.tanh(normopt.probed_dense(b["x"], p["w1"], p["b1"], probes["w1"],
                                      probes["b1"]))
    return jnp.mean(normopt.probed_dense(h, p["w2"], None, probes["w2"])
                    + p["b2"])
  with pytest.raises(ValueError, match=r"unused: \['b2'\]"):
    normopt.per_example_block_norms(forgets_b2, params, batch, probed=True)
  with pytest.raises(ValueError, match="chunk_size"):
    normopt.per_example_block_norms(_probed_mlp_loss, params, batch,
                                    probed=True, chunk_size=4)
  with pytest.raises(ValueError, match="kernel_probe"):
    normopt.probed_dense(batch["x"], params["w1"], None, jnp.zeros(3))
  # bf16 params: gradients keep their dtype, norms are float32 and close.
  low = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  _, grads, norms = normopt.per_example_block_norms(
      _probed_mlp_loss, low, jax.tree.map(lambda x: x, batch), probed=True)
  assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
  assert all(n.dtype == jnp.float32 for n in jax.tree.leaves(norms))
  _, _, ref = normopt.per_example_block_norms(mlp_loss, params, batch)
  np.testing.assert_allclose(np.asarray(jax.tree.leaves(norms)),
                             np.asarray(jax.tree.leaves(ref)), rtol=0.05)


def test_probed_sub_batch():
  _, params, batch = _problem("mlp", n=12)
  _, _, approx = normopt.per_example_block_norms(
      _probed_mlp_loss, params, batch, probed=True, num_examples=4)
  _, _, exact4 = normopt.per_example_block_norms(
      mlp_loss, params, jax.tree.map(lambda x: x[:4], batch))
  np.testing.assert_allclose(np.asarray(jax.tree.leaves(approx)),
                             np.asarray(jax.tree.leaves(exact4)), rtol=1e-9)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_norms_exact_at_any_magnitude_in_float32(scale):
  """Squares of 1e30 overflow float32 and of 1e-30 underflow: both paths
  rescue and give scale x the unscaled norms."""
  with jax.enable_x64(False):
    _, params, batch = _problem("mlp")
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    batch = {"x": batch["x"].astype(jnp.float32), "y": batch["y"]}
    scaled = lambda p, b, *pr: scale * (  # noqa: E731
        _probed_mlp_loss(p, b, *pr) if pr else mlp_loss(p, b))
    _, _, want = normopt.per_example_block_norms(mlp_loss, params, batch)
    for probed in (False, True):
      _, _, got = normopt.per_example_block_norms(scaled, params, batch,
                                                  probed=probed)
      np.testing.assert_allclose(
          np.asarray(jax.tree.leaves(got), np.float64) / scale,
          np.asarray(jax.tree.leaves(want), np.float64), rtol=1e-5)
