"""The shared suite every method runs through: it trains, compiles once,
keeps dtypes, works with inject_hyperparams, tolerates extra arguments."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from tests import registry
from tests.problems import digits, example_norms

NAMES = sorted(registry.ALIASES)


def _loss(params, x, y):
  logits = x @ params["kernel"] + params["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.mark.parametrize("name", NAMES)
def test_trains_digits_logistic_regression(name):
  """Each method reaches >= 95% training accuracy on scikit-learn's digits
  (1797 images, 10 classes) in 300 mini-batch steps of 128."""
  x, y = digits()
  x, y = jnp.asarray(x), jnp.asarray(y)
  params = {"kernel": jnp.zeros((64, 10)), "bias": jnp.zeros((10,))}
  tx = registry.make(name)
  key = jax.random.PRNGKey(0)
  idx = jax.random.randint(key, (300, 128), 0, x.shape[0])

  def step(carry, batch):
    params, state = carry
    xb, yb = x[batch], y[batch]
    grads = jax.grad(_loss)(params, xb, yb)
    kwargs = {}
    if name == "clars":
      kwargs = {"per_example_norms": example_norms(_loss, params, xb, yb)}
    elif name == "adaptive_nigt":
      other = jnp.roll(batch, 64)
      kwargs = {"second_grads": jax.grad(_loss)(params, x[other], y[other])}
    updates, state = tx.update(grads, state, params, **kwargs)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, idx))(
      (params, tx.init(params)))
  if name in ("nigt", "adaptive_nigt"):
    params = normopt.igt_true_params(params, state)
  accuracy = float(jnp.mean(jnp.argmax(x @ params["kernel"] + params["bias"],
                                       -1) == y))
  assert accuracy >= 0.95, accuracy


def _tree(dtype="float32", seed=0):
  rng = np.random.default_rng(seed)
  return {"kernel": jnp.asarray(rng.standard_normal((5, 3)), dtype),
          "bias": jnp.asarray(rng.standard_normal((3,)), dtype)}


@pytest.mark.parametrize("name", NAMES)
def test_compiles_once_over_changing_values(name):
  chex.clear_trace_counter()
  tx = registry.make(name)
  params = _tree()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    u, state = tx.update(grads, state, params,
                         **registry.extra_args(name, grads, params))
    return optax.apply_updates(params, u), state

  state = tx.init(params)
  for i in range(10):
    params, state = step(params, state, _tree(seed=i + 1))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_dtypes_and_state_shapes_kept(name, dtype):
  tx = registry.make(name)
  params = _tree(dtype)
  state = tx.init(params)
  grads = _tree(dtype, seed=1)
  u, new_state = jax.jit(lambda g, s, p: tx.update(
      g, s, p, **registry.extra_args(name, g, p)))(grads, state, params)
  chex.assert_trees_all_equal_dtypes(u, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
  assert all(np.isfinite(np.asarray(x, np.float32)).all()
             for x in jax.tree.leaves(u))


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_and_zero_params_never_nan(name):
  tx = registry.make(name)
  params = jax.tree.map(jnp.zeros_like, _tree())
  state = tx.init(params)
  for grads in (jax.tree.map(jnp.zeros_like, params), _tree(seed=2)):
    u, state = tx.update(grads, state, params,
                         **registry.extra_args(name, grads, params))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(u))


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_parity(name):
  factory, kwargs = registry.ALIASES[name]
  plain = factory(**kwargs)
  injected = optax.inject_hyperparams(factory)(**kwargs)
  params = _tree()
  s1, s2 = plain.init(params), injected.init(params)
  for i in range(3):
    g = _tree(seed=i + 3)
    extra = registry.extra_args(name, g, params)
    u1, s1 = plain.update(g, s1, params, **extra)
    u2, s2 = jax.jit(lambda g, s, p, e: injected.update(g, s, p, **e))(
        g, s2, params, extra)
    chex.assert_trees_all_close(u1, u2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_learning_rate_schedule_and_extra_args_tolerated(name):
  tx = registry.make(name, learning_rate=optax.cosine_decay_schedule(0.1, 10))
  params = _tree()
  g = _tree(seed=4)
  extra = {**registry.extra_args(name, g, params), "unrelated": 1.0}
  u, _ = tx.update(g, tx.init(params), params, **extra)
  assert jax.tree.structure(u) == jax.tree.structure(params)


@pytest.mark.parametrize("name", NAMES)
def test_negative_learning_rate_rejected(name):
  with pytest.raises(ValueError, match="learning_rate"):
    registry.make(name, learning_rate=-0.1)


def test_lars_default_mask_keeps_zero_bias_step_bounded():
  """Zero-initialised biases never get an exploding step: with the default
  mask (every leaf) a zero-norm block is scaled as if ‖w‖ = 1, so its step
  has norm at most lr·k (CLARS: its denominator, the mean per-example norm,
  is at least ‖g‖), times 1 + β for Nesterov; with mask=None it is a plain
  momentum step, |u| <= lr (1 + β) |g|."""
  params = {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros((4,))}
  grads = {"kernel": jnp.full((4, 4), 1e-3), "bias": jnp.full((4,), 1e-3)}
  norms = {"kernel": jnp.asarray(4e-3), "bias": jnp.asarray(2e-3)}
  for tx, k in ((normopt.lars(1.0), 1e-3), (normopt.clars(1.0), 1e-2)):
    u, _ = tx.update(grads, tx.init(params), params, per_example_norms=norms)
    assert float(jnp.linalg.norm(u["bias"])) <= 1.0 * k * 1.9 + 1e-9
  for tx in (normopt.lars(1.0, mask=None), normopt.clars(1.0, mask=None)):
    u, _ = tx.update(grads, tx.init(params), params, per_example_norms=norms)
    assert float(jnp.max(jnp.abs(u["bias"]))) <= 1.9e-3 + 1e-9


@pytest.mark.parametrize("name", ["sngm", "clars", "nigt"])
def test_flax_nnx_optimizer(name):
  from flax import nnx
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, registry.make(name), wrt=nnx.Param)
  x = jnp.ones((4, 3))
  before = np.asarray(model.kernel[...]).copy()

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: (m(x) ** 2).sum())(model)
    extra = registry.extra_args(name, grads, None)
    optimizer.update(model, grads, **extra)

  step(model, optimizer)
  assert not np.allclose(np.asarray(model.kernel[...]), before)
