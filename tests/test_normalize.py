"""normalize_global and normalize_per_block against float64 references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import normopt
from tests import reference, trees


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_global_matches_reference(precision, eps):
  dtype = "float64" if precision == "float64" else "float32"
  rng = np.random.default_rng(1)
  grads = [trees.random_tree(rng, dtype, scale=10.0 ** rng.integers(-3, 3))
           for _ in range(50)]
  outs, state = trees.run_updates(normopt.normalize_global(eps=eps), grads)
  for g, u in zip(grads, outs):
    trees.assert_tree_matches(u, reference.normalize(trees.blocks(g), eps),
                              **trees.tol(precision))
  np.testing.assert_allclose(float(state.norm),
                             reference.norm(trees.blocks(grads[-1])),
                             rtol=trees.rtol_for(precision))


def test_per_block_matches_reference(precision):
  dtype = "float64" if precision == "float64" else "float32"
  rng = np.random.default_rng(2)
  grads = [trees.random_tree(rng, dtype) for _ in range(50)]
  outs, _ = trees.run_updates(normopt.normalize_per_block(), grads)
  for g, u in zip(grads, outs):
    expected = [reference.normalize([b])[0] for b in trees.blocks(g)]
    trees.assert_tree_matches(u, expected, **trees.tol(precision))


def test_per_block_with_labels():
  rng = np.random.default_rng(3)
  g = trees.random_tree(rng)
  labels = {"dense": {"kernel": "dense", "bias": "dense"}, "scale": "rest",
            "conv": "conv", "head": "rest"}
  tx = normopt.normalize_per_block(blocks=labels)
  u, state = tx.update(g, tx.init(g))
  b = trees.blocks(g)  # leaf order: conv, dense.bias, dense.kernel, head, scale
  dense = reference.normalize([b[1], b[2]])
  rest = reference.normalize([b[3], b[4]])
  conv = reference.normalize([b[0]])
  trees.assert_tree_matches(u, [conv[0], dense[0], dense[1], rest[0], rest[1]],
                            1e-5)
  assert set(state.norms) == {"dense", "rest", "conv"}
  # callable spec gives the same
  tx2 = normopt.normalize_per_block(blocks=lambda p: labels)
  chex.assert_trees_all_close(tx2.update(g, tx2.init(g))[0], u)


@pytest.mark.parametrize("tx", [normopt.normalize_global(),
                                normopt.normalize_per_block()])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_dtype_kept_and_zero_is_zero(tx, dtype):
  g = {"a": jnp.zeros((3, 2), dtype), "b": jnp.ones((4,), dtype)}
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  chex.assert_trees_all_equal_dtypes(u, g)
  z = jax.tree.map(jnp.zeros_like, g)
  uz, _ = jax.jit(tx.update)(z, tx.init(z))
  chex.assert_trees_all_equal(uz, z)


def test_none_leaves_and_empty_tree():
  tx = normopt.normalize_global()
  g = {"a": jnp.array([3.0, 4.0]), "frozen": None}
  u, _ = tx.update(g, tx.init(g))
  assert u["frozen"] is None
  np.testing.assert_allclose(u["a"], [0.6, 0.8])
  for tx in (normopt.normalize_global(), normopt.normalize_per_block()):
    u, _ = tx.update({}, tx.init({}))
    assert u == {}


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("tx", [normopt.normalize_global(),
                                normopt.normalize_per_block()])
def test_scale_invariance_extreme(scale, tx):
  rng = np.random.default_rng(4)
  g = trees.random_tree(rng)
  big = jax.tree.map(lambda x: x * scale, g)
  u1, _ = jax.jit(tx.update)(g, tx.init(g))
  u2, _ = jax.jit(tx.update)(big, tx.init(big))
  chex.assert_trees_all_close(u1, u2, rtol=1e-5)


def test_float16_overflowing_squares_give_unit_norm():
  g = {"w": jnp.full((100,), 30000.0, jnp.float16)}
  tx = normopt.normalize_global()
  u, _ = tx.update(g, tx.init(g))
  assert u["w"].dtype == jnp.float16
  np.testing.assert_allclose(float(reference.norm(trees.blocks(u))), 1.0,
                             rtol=1e-3)


def test_axis_name_sums_over_shards():
  n = 4
  rng = np.random.default_rng(5)
  full = {"w": jnp.asarray(rng.standard_normal((n * 3, 2)), jnp.float32),
          "b": jnp.asarray(rng.standard_normal((n * 5,)), jnp.float32)}
  shards = jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), full)
  for tx in (normopt.normalize_global(axis_name="i"),
             normopt.normalize_per_block(axis_name="i")):
    out, _ = jax.pmap(tx.update, axis_name="i",
                      devices=jax.devices()[:n])(shards, jax.pmap(
                          tx.init, devices=jax.devices()[:n])(shards))
    single_tx = (normopt.normalize_global() if "Global" in type(
        tx.init(full)).__name__ else normopt.normalize_per_block())
    expected, _ = single_tx.update(full, single_tx.init(full))
    chex.assert_trees_all_close(
        jax.tree.map(lambda x, e: x.reshape(e.shape), out, expected),
        expected, rtol=1e-6)


def test_composes_with_optax():
  g = {"w": jnp.array([3.0, 4.0]), "step": jnp.array([1.0])}
  mask = {"w": True, "step": False}
  tx = optax.chain(optax.masked(normopt.normalize_global(), mask),
                   optax.scale(-1.0))
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(u["w"], [-0.6, -0.8], rtol=1e-6)
  np.testing.assert_allclose(u["step"], [-1.0])
  inj = optax.inject_hyperparams(normopt.normalize_global)(eps=0.0)
  u2, _ = jax.jit(inj.update)(g, inj.init(g))
  np.testing.assert_allclose(u2["w"], np.array([3.0, 4.0]) / np.sqrt(26.0),
                             rtol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match="eps"):
    normopt.normalize_global(eps=-1.0)
  with pytest.raises(ValueError, match="eps"):
    normopt.normalize_per_block(eps=float("nan"))
  tx = normopt.normalize_global()
  with pytest.raises(TypeError, match="int32"):
    tx.update({"n": jnp.zeros(3, jnp.int32)}, tx.init(None))
  with pytest.raises(ValueError, match="one label per leaf"):
    g = {"a": jnp.ones(2), "b": jnp.ones(2)}
    normopt.normalize_per_block(blocks={"a": "x"}).init(g)


_GLOBAL = normopt.normalize_global()
_UPDATE = jax.jit(_GLOBAL.update)


@given(st.floats(1e-20, 1e20), st.integers(0, 2**31 - 1))
def test_property_scale_invariance_and_unit_norm(c, seed):
  g = trees.random_tree(np.random.default_rng(seed))
  u1, _ = _UPDATE(g, _GLOBAL.init(g))
  u2, _ = _UPDATE(jax.tree.map(lambda x: x * c, g), _GLOBAL.init(g))
  chex.assert_trees_all_close(u1, u2, rtol=2e-5, atol=1e-7)
  assert reference.norm(trees.blocks(u1)) == pytest.approx(1.0, rel=1e-5)


class NormalizeVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_variants_agree(self):
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[0.0]])}
    tx = normopt.normalize_global()

    @self.variant
    def update(g):
      return tx.update(g, tx.init(g))[0]

    out = update(g)
    if out["a"].ndim == 2:  # pmap adds a device axis
      out = jax.tree.map(lambda x: x[0], out)
    chex.assert_trees_all_close(out, {"a": jnp.array([0.6, 0.8]),
                                      "b": jnp.array([[0.0]])})
