"""Hypothesis properties of the methods, each function compiled once.

Hyperparameters enter through ``optax.inject_hyperparams`` and scales as
arguments, so hypothesis's examples reuse one compiled function: ~1300
generated cases across the suite in a few seconds of run time.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st

import normopt
from normopt._src import numerics
from tests import trees

STEPS = 8
seeds = st.integers(0, 2**31 - 1)


def _grad_sequence(seed, scales=None):
  rng = np.random.default_rng(seed)
  seq = [trees.random_tree(rng) for _ in range(STEPS)]
  if scales is not None:
    seq = [jax.tree.map(lambda x, c=c: c * x, g) for g, c in zip(seq, scales)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *seq)


def _updates(tx, params, grads, extra=lambda g: {}, **hyperparams):
  """All ``STEPS`` updates of ``tx`` (params fixed), one scan; keyword
  arguments set ``inject_hyperparams`` values (traced, so no recompile)."""
  state = tx.init(params)
  for name, value in hyperparams.items():
    state.hyperparams[name] = value

  def step(state, g):
    u, state = tx.update(g, state, params, **extra(g))
    return state, u
  return jax.lax.scan(step, state, grads)[1]


SCALE_FREE = {
    "sngm": lambda: normopt.sngm(0.1, beta=0.9),
    "sngd": lambda: normopt.sngd(0.1),
    "block_sngm": lambda: normopt.block_sngm(0.1, beta=0.9),
    "normalized_sgdm": lambda: normopt.normalized_sgdm(0.1, beta=0.9),
    "nigt": lambda: normopt.nigt(0.1, beta=0.9),
    "lars": lambda: normopt.lars(1.0, momentum=0.9, trust_coefficient=0.01, mask=True),
    "clars": lambda: normopt.clars(1.0, momentum=0.9, mask=True),
}


@functools.cache
def _scaled_run(name):
  tx = SCALE_FREE[name]()
  params = trees.random_tree(np.random.default_rng(0))
  extra = ((lambda g: {"per_example_norms": jax.tree.map(
      lambda x: numerics.global_norm([x]), g)})
      if name == "clars" else (lambda g: {}))

  @jax.jit
  def run(grads, scale):
    plain = _updates(tx, params, grads, extra)
    scaled = _updates(tx, params, jax.tree.map(lambda g: g * scale, grads),
                      extra)
    return plain, scaled
  return run


@settings(max_examples=350)
@given(st.sampled_from(sorted(SCALE_FREE)), st.integers(-30, 30), seeds)
def test_normalized_methods_are_scale_invariant(name, exponent, seed):
  """8 steps on gradients times 10^e, |e| <= 30, equal the unscaled steps."""
  grads = _grad_sequence(seed)
  plain, scaled = _scaled_run(name)(grads, jnp.float32(10.0 ** exponent))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(scaled)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=5e-5,
                               atol=1e-6)


@functools.cache
def _sngm_buffer_norms():
  tx = optax.inject_hyperparams(normopt.sngm)(learning_rate=1.0, beta=0.5)
  params = trees.random_tree(np.random.default_rng(0))

  @jax.jit
  def run(grads, beta):
    updates = _updates(tx, params, grads, beta=beta)
    return jnp.sqrt(sum(jnp.sum(jnp.square(u), tuple(range(1, u.ndim)))
                        for u in jax.tree.leaves(updates)))
  return run


@settings(max_examples=300)
@given(st.floats(0.0, 0.99), st.lists(st.floats(1e-6, 1e6), min_size=STEPS,
                                      max_size=STEPS), seeds)
def test_sngm_update_norm_bound(beta, scales, seed):
  """SNGM Lemma 2: ‖u_t‖ <= 1/(1-β) (lr = 1), whatever the gradients."""
  norms = _sngm_buffer_norms()(_grad_sequence(seed, scales),
                               jnp.float32(beta))
  bound = 1.0 / (1.0 - beta)
  assert np.all(np.asarray(norms) <= bound * (1 + 1e-5)), (norms, bound)


@functools.cache
def _qhm_runs():
  params = trees.random_tree(np.random.default_rng(0))
  qhm = optax.inject_hyperparams(normopt.qhm)(learning_rate=0.1, beta=0.5,
                                              nu=0.5)
  nesterov = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1,
                                                 momentum=0.5, nesterov=True)
  heavy = optax.inject_hyperparams(normopt.heavy_ball)(beta=0.5, ema=True)

  @jax.jit
  def run(grads, beta):
    lr = jnp.float32(0.1)
    return {
        "nu0": _updates(qhm, params, grads, beta=beta, nu=jnp.float32(0.0)),
        "nu1": _updates(qhm, params, grads, beta=beta, nu=jnp.float32(1.0)),
        "nu_beta": _updates(qhm, params, grads, beta=beta, nu=beta),
        "sgd": jax.tree.map(lambda g: -lr * g, grads),
        "ema": jax.tree.map(lambda m: -lr * m,
                            _updates(heavy, params, grads, beta=beta)),
        "nesterov": _updates(nesterov, params, grads,
                             learning_rate=lr * (1 - beta), momentum=beta),
    }
  return run


@settings(max_examples=300)
@given(st.floats(0.0, 0.99), seeds)
def test_qhm_reductions(beta, seed):
  """QHM: ν = 0 is SGD, ν = 1 the EMA (NSHB), ν = β is Nesterov SGD with
  learning rate α(1-β) (optax.sgd)."""
  out = _qhm_runs()(_grad_sequence(seed), jnp.float32(beta))
  for got, want in (("nu0", "sgd"), ("nu1", "ema"), ("nu_beta", "nesterov")):
    for a, b in zip(jax.tree.leaves(out[got]), jax.tree.leaves(out[want])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4,
                                 atol=2e-6, err_msg=f"{got} vs {want}")


@functools.cache
def _igt_run():
  tx = optax.inject_hyperparams(normopt.igt_extrapolate)(beta=0.5)
  w0 = trees.random_tree(np.random.default_rng(0))

  @jax.jit
  def run(steps, beta):
    state = tx.init(w0)
    state.hyperparams["beta"] = beta

    def step(carry, s):
      x, w, state = carry
      u, state = tx.update(s, state, x)
      return (optax.apply_updates(x, u), optax.apply_updates(w, s), state), None
    (x, w, state), _ = jax.lax.scan(step, (w0, w0, state), steps)
    return normopt.igt_true_params(x, state), w
  return run


@settings(max_examples=300)
@given(st.floats(0.0, 0.95), seeds)
def test_igt_true_params_inverts_the_extrapolation(beta, seed):
  """After any steps, igt_true_params(x_t) is the true iterate w_t."""
  rng = np.random.default_rng(seed)
  steps = jax.tree.map(lambda *xs: 0.1 * jnp.stack(xs),
                       *[trees.random_tree(rng) for _ in range(STEPS)])
  recovered, w = _igt_run()(steps, jnp.float32(beta))
  for a, b in zip(jax.tree.leaves(recovered), jax.tree.leaves(w)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@functools.cache
def _heavy_ball_runs():
  params = trees.random_tree(np.random.default_rng(0))
  plain = optax.inject_hyperparams(normopt.heavy_ball)(beta=0.5)
  ema = optax.inject_hyperparams(normopt.heavy_ball)(beta=0.5, ema=True)

  @jax.jit
  def run(grads, beta, c):
    return (_updates(plain, params, grads, beta=beta),
            _updates(plain, params, jax.tree.map(lambda g: c * g, grads),
                     beta=beta),
            _updates(ema, params, grads, beta=beta))
  return run


@settings(max_examples=200)
@given(st.floats(0.0, 0.99), st.floats(0.1, 10.0), seeds)
def test_heavy_ball_linear_and_ema_scaling(beta, c, seed):
  """The buffer is linear in the gradients; the EMA is (1-β) times it."""
  plain, scaled, ema = _heavy_ball_runs()(_grad_sequence(seed),
                                          jnp.float32(beta), jnp.float32(c))
  for p, s, e in zip(jax.tree.leaves(plain), jax.tree.leaves(scaled),
                     jax.tree.leaves(ema)):
    np.testing.assert_allclose(np.asarray(s), c * np.asarray(p), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(e), (1 - beta) * np.asarray(p),
                               rtol=1e-4, atol=1e-5)
