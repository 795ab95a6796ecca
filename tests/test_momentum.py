"""heavy_ball and qh_combine against float64 reference loops."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from tests import reference, trees


def _run(tx, grads):
  return trees.run_updates(tx, grads)[0]


def _grads(precision, n=50, seed=0):
  dtype = "float64" if precision == "float64" else "float32"
  rng = np.random.default_rng(seed)
  return [trees.random_tree(rng, dtype) for _ in range(n)]


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("ema", [False, True])
@pytest.mark.parametrize("init", ["zero", "first"])
def test_heavy_ball_matches_reference(precision, nesterov, ema, init):
  grads = _grads(precision)
  outs = _run(normopt.heavy_ball(0.9, nesterov=nesterov, ema=ema, init=init), grads)
  expected = reference.heavy_ball([trees.blocks(g) for g in grads], 0.9,
                                  nesterov, ema, init == "first")
  for u, e in zip(outs, expected):
    trees.assert_tree_matches(u, e, **trees.tol(precision))


def test_heavy_ball_schedule(precision):
  grads = _grads(precision, seed=1)
  def schedule(count):
    return 0.5 + 0.4 * jnp.minimum(count, 10) / 10
  outs = _run(normopt.heavy_ball(schedule, ema=True), grads)
  expected = reference.heavy_ball([trees.blocks(g) for g in grads],
                                  lambda t: 0.5 + 0.4 * min(t, 10) / 10,
                                  ema=True)
  for u, e in zip(outs, expected):
    trees.assert_tree_matches(u, e, **trees.tol(precision))


@pytest.mark.parametrize("beta,nu", [(0.9, 0.7), (0.5, 0.0), (0.9, 1.0),
                                     (0.0, 0.3)])
def test_qh_combine_matches_reference(precision, beta, nu):
  grads = _grads(precision, seed=2)
  outs = _run(normopt.qh_combine(beta, nu=nu), grads)
  expected = reference.qh_combine([trees.blocks(g) for g in grads], beta, nu)
  for u, e in zip(outs, expected):
    trees.assert_tree_matches(u, e, **trees.tol(precision))


def test_qh_combine_schedules(precision):
  grads = _grads(precision, seed=3)
  outs = _run(normopt.qh_combine(lambda k: 0.9 * 0.5 ** (k // 10),
                                 nu=lambda k: 0.7 * 0.5 ** (k // 20)), grads)
  expected = reference.qh_combine([trees.blocks(g) for g in grads],
                                  lambda k: 0.9 * 0.5 ** (k // 10),
                                  lambda k: 0.7 * 0.5 ** (k // 20))
  for u, e in zip(outs, expected):
    trees.assert_tree_matches(u, e, **trees.tol(precision))


@pytest.mark.parametrize("tx", [normopt.heavy_ball(0.9, nesterov=True),
                                normopt.qh_combine(0.9, nu=0.7)])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_dtype_kept(tx, dtype):
  g = {"a": jnp.ones((3, 2), dtype), "b": jnp.zeros((), dtype)}
  state = tx.init(g)
  u, new_state = jax.jit(tx.update)(g, state)
  chex.assert_trees_all_equal_dtypes(u, g)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)


def test_bad_hyperparameters_name_the_argument():
  for bad in (-0.1, 1.0, float("nan")):
    with pytest.raises(ValueError, match="beta"):
      normopt.heavy_ball(bad)
    with pytest.raises(ValueError, match="beta"):
      normopt.qh_combine(bad, nu=0.5)
  with pytest.raises(ValueError, match="nu"):
    normopt.qh_combine(0.5, nu=1.5)
  with pytest.raises(ValueError, match="init"):
    normopt.heavy_ball(0.5, init="ones")


def test_inject_hyperparams_parity():
  grads = _grads("float32", n=10, seed=4)
  plain = _run(normopt.heavy_ball(0.8, nesterov=True), grads)
  injected = _run(optax.inject_hyperparams(normopt.heavy_ball)(beta=0.8,
                                                               nesterov=True),
                  grads)
  for a, b in zip(plain, injected):
    chex.assert_trees_all_close(a, b, rtol=1e-6)


class MomentumVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_two_steps_by_hand(self):
    tx = normopt.qh_combine(0.5, nu=0.5)
    update = self.variant(tx.update)
    g = jnp.array([2.0])
    u1, s = update(g, tx.init(g))
    u2, s = update(g, s)
    # d1 = 1, m1 = 1 + 0.5 = 1.5; d2 = 0.5 + 1 = 1.5, m2 = 1 + 0.75 = 1.75
    np.testing.assert_allclose([u1[0], u2[0]], [1.5, 1.75])
