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


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("chunk_size", [None, 4, 1])
def test_matches_per_example_loop(kind, chunk_size):
  loss, params, batch = _problem(kind)
  got_loss, got_grads, got_norms = jax.jit(
      lambda p, b: normopt.per_example_block_norms(
          loss, p, b, chunk_size=chunk_size))(params, batch)
  ref_loss, ref_grads, ref_norms = _loop_reference(loss, params, batch)
  np.testing.assert_allclose(float(got_loss), ref_loss, rtol=1e-6)
  for g, r in zip(jax.tree.leaves(got_grads), ref_grads):
    np.testing.assert_allclose(np.asarray(g), r, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(np.asarray(jax.tree.leaves(got_norms)),
                             ref_norms, rtol=1e-6)
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
