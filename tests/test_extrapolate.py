"""igt_extrapolate and igt_true_params against a float64 reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from tests import reference, trees


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_matches_reference(precision, beta):
  dtype = "float64" if precision == "float64" else "float32"
  rng = np.random.default_rng(0)
  w0 = trees.random_tree(rng, dtype)
  steps = [trees.random_tree(rng, dtype, scale=0.1) for _ in range(50)]
  tx = normopt.igt_extrapolate(beta)
  state = tx.init(w0)
  update = jax.jit(tx.update)
  expected = reference.igt_extrapolate([trees.blocks(s) for s in steps],
                                       trees.blocks(w0), lambda t: beta)
  x, w = w0, w0
  for step, e in zip(steps, expected):
    u, state = update(step, state, x)
    trees.assert_tree_matches(u, e, **trees.tol(precision))
    x = optax.apply_updates(x, u)
    w = optax.apply_updates(w, step)
    # The helper inverts the extrapolation: the true iterate comes back.
    chex.assert_trees_all_close(normopt.igt_true_params(x, state), w,
                                rtol=1e-5, atol=1e-5)


def test_schedule_uses_beta_of_the_next_point():
  rng = np.random.default_rng(1)
  w0 = trees.random_tree(rng)
  steps = [trees.random_tree(rng, scale=0.1) for _ in range(20)]
  def beta(count):
    return 0.5 + 0.02 * count
  tx = normopt.igt_extrapolate(beta)
  state = tx.init(w0)
  # With 1-based t, β_t is the value at count t - 1.
  expected = reference.igt_extrapolate([trees.blocks(s) for s in steps],
                                       trees.blocks(w0),
                                       lambda t: 0.5 + 0.02 * (t - 1))
  x = w0
  for step, e in zip(steps, expected):
    u, state = tx.update(step, state, x)
    trees.assert_tree_matches(u, e, 1e-5, atol=1e-6)
    x = optax.apply_updates(x, u)


def test_true_params_errors_without_igt_state():
  tx = normopt.sngm(0.1)
  w = jnp.ones(2)
  with pytest.raises(ValueError, match="IgtExtrapolateState"):
    normopt.igt_true_params(w, tx.init(w))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_dtype_kept(dtype):
  tx = normopt.igt_extrapolate(0.9)
  w = {"a": jnp.ones((2, 2), dtype)}
  s = tx.init(w)
  u, s2 = jax.jit(tx.update)(w, s, w)
  chex.assert_trees_all_equal_dtypes(u, w)
  chex.assert_trees_all_equal_shapes_and_dtypes(s, s2)
  assert normopt.igt_true_params(w, s2)["a"].dtype == dtype


def test_bad_beta_and_missing_params():
  with pytest.raises(ValueError, match="beta"):
    normopt.igt_extrapolate(1.0)
  tx = normopt.igt_extrapolate(0.5)
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
