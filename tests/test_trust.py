"""trust_ratio (LARS and CLARS forms) against a float64 reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from tests import reference, trees


@pytest.mark.parametrize("wd,eps", [(0.0, 0.0), (1e-2, 1e-3)])
@pytest.mark.parametrize("use_mask", [False, True])
def test_lars_matches_reference(precision, wd, eps, use_mask):
  dtype = "float64" if precision == "float64" else "float32"
  rng = np.random.default_rng(0)
  tx = normopt.trust_ratio("lars", trust_coefficient=0.01, eps=eps, weight_decay=wd,
                           mask=None if use_mask else True)
  w = trees.random_tree(rng, dtype)
  state = tx.init(w)
  update = jax.jit(tx.update)
  selected = [np.ndim(b) > 1 or not use_mask for b in trees.blocks(w)]
  for _ in range(50):
    g = trees.random_tree(rng, dtype)
    u, state = update(g, state, w)
    expected = reference.lars_scale(trees.blocks(g), trees.blocks(w), 0.01,
                                    eps, wd, selected)
    trees.assert_tree_matches(u, expected, **trees.tol(precision))
    w = jax.tree.map(lambda a, b: a - 0.1 * b, w, u)


def test_zero_params_and_zero_grads_are_safe():
  tx = normopt.trust_ratio("lars", trust_coefficient=0.001, mask=True)
  w = {"zero": jnp.zeros((3, 3)), "live": jnp.ones((3, 3))}
  g = {"zero": jnp.ones((3, 3)), "live": jnp.zeros((3, 3))}
  u, state = tx.update(g, tx.init(w), w)
  # zero params: scaled as if ‖w‖ = 1 -> step k * g / ‖g‖ (norm 0.001)
  np.testing.assert_allclose(float(jnp.linalg.norm(u["zero"])), 0.001,
                             rtol=1e-6)
  chex.assert_trees_all_equal(u["live"], jnp.zeros((3, 3)))
  assert np.isfinite(np.asarray(jax.tree.leaves(state.ratios))).all()
  # optax gives the zero-param block ratio 1: a 1000x larger step.
  uo, _ = optax.scale_by_trust_ratio(trust_coefficient=0.001).update(g, None, w)
  assert float(jnp.linalg.norm(uo["zero"])) == pytest.approx(3.0)


def test_masked_blocks_pass_through_and_clip():
  w = {"kernel": jnp.full((2, 2), 100.0), "bias": jnp.ones((2,))}
  g = {"kernel": jnp.full((2, 2), 0.01), "bias": jnp.full((2,), 5.0)}
  tx = normopt.trust_ratio("lars", trust_coefficient=1.0, weight_decay=0.1, clip=2.0)
  u, state = tx.update(g, tx.init(w), w)
  chex.assert_trees_all_equal(u["bias"], g["bias"])  # no decay, no scale
  assert float(state.ratios["kernel"]) == 2.0
  assert float(state.ratios["bias"]) == 1.0
  np.testing.assert_allclose(u["kernel"], 2.0 * (0.01 + 0.1 * 100.0))


def test_clars_uses_per_example_norms():
  w = {"k": jnp.full((2, 2), 2.0), "b": jnp.ones((2,))}
  g = {"k": jnp.full((2, 2), 0.5), "b": jnp.ones((2,))}
  norms = {"k": jnp.asarray(4.0), "b": jnp.asarray(1.0)}
  tx = normopt.trust_ratio("clars", trust_coefficient=1.0)
  u, _ = tx.update(g, tx.init(w), w, per_example_norms=norms)
  np.testing.assert_allclose(u["k"], 0.5 * 4.0 / 4.0)
  with pytest.raises(ValueError, match="per_example_norms"):
    tx.update(g, tx.init(w), w)
  with pytest.raises(ValueError, match="one scalar per block"):
    tx.update(g, tx.init(w), w, per_example_norms={"k": jnp.ones(2),
                                                   "b": jnp.ones(())})


@pytest.mark.parametrize("kind", ["lars", "clars"])
def test_axis_name_sums_norms_over_shards(kind):
  """Each of 4 devices holds rows of w and g: same update as the whole tree."""
  n = 4
  rng = np.random.default_rng(0)
  w = {"k": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)}
  g = {"k": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)}
  extra = {"per_example_norms": {"k": jnp.asarray(2.5)}} if kind == "clars" \
      else {}
  tx = normopt.trust_ratio(kind, trust_coefficient=0.1, weight_decay=0.01, mask=True,
                           axis_name="d")
  whole, _ = normopt.trust_ratio(kind, trust_coefficient=0.1, weight_decay=0.01,
                                 mask=True).update(g, tx.init(w), w, **extra)
  shard = lambda x: x.reshape(n, 2, 3)  # noqa: E731
  u, _ = jax.pmap(lambda g, w: tx.update(g, tx.init(w), w, **extra),
                  axis_name="d", devices=jax.devices()[:n])(
                      jax.tree.map(shard, g), jax.tree.map(shard, w))
  np.testing.assert_allclose(u["k"].reshape(8, 3), whole["k"], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_dtype_kept(dtype):
  w = {"k": jnp.ones((3, 3), dtype)}
  tx = normopt.trust_ratio()
  s = tx.init(w)
  u, s2 = jax.jit(tx.update)(w, s, w)
  chex.assert_trees_all_equal_dtypes(u, w)
  chex.assert_trees_all_equal_shapes_and_dtypes(s, s2)


def test_bad_arguments():
  with pytest.raises(ValueError, match="kind"):
    normopt.trust_ratio("lamb")
  with pytest.raises(ValueError, match="eps"):
    normopt.trust_ratio(eps=-1.0)
  with pytest.raises(ValueError, match="weight_decay"):
    normopt.trust_ratio(weight_decay=-1.0)
  tx = normopt.trust_ratio()
  with pytest.raises(ValueError, match="params"):
    tx.update({"a": jnp.ones(2)}, tx.init({"a": jnp.ones(2)}))
