"""The gradient noise scale against a float64 NumPy computation from explicit
per-example gradients (McCandlish et al., App. A.1), on both paths and at
extreme loss scales; the tracker under jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from tests import reference


def _linear(seed=0, n=32, d=5, k=3):
  rng = np.random.default_rng(seed)
  params = {"kernel": jnp.asarray(rng.normal(size=(d, k)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(k,)), jnp.float32)}
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x @ rng.normal(size=(d, k)) + 0.5 * rng.normal(size=(n, k))).astype(
      np.float32)

  def loss(p, b, probes=None):
    pred = (b[0] @ p["kernel"] + p["bias"] if probes is None else
            normopt.probed_dense(b[0], p["kernel"], p["bias"],
                                 probes["kernel"], probes["bias"]))
    return 0.5 * jnp.mean(jnp.sum((pred - b[1]) ** 2, -1))
  return params, (jnp.asarray(x), jnp.asarray(y)), loss


def _mlp(seed=1, n=16, d=6, h=8, k=4):
  rng = np.random.default_rng(seed)
  params = {"l1": {"kernel": jnp.asarray(rng.normal(size=(d, h)) / 2,
                                         jnp.float32),
                   "bias": jnp.zeros(h, jnp.float32)},
            "l2": {"kernel": jnp.asarray(rng.normal(size=(h, k)) / 2,
                                         jnp.float32),
                   "bias": jnp.zeros(k, jnp.float32)}}
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  y = jnp.asarray(rng.integers(0, k, n))

  def loss(p, b, probes=None):
    def dense(name, a):
      if probes is None:
        return a @ p[name]["kernel"] + p[name]["bias"]
      return normopt.probed_dense(a, p[name]["kernel"], p[name]["bias"],
                                  probes[name]["kernel"], probes[name]["bias"])
    logits = dense("l2", jnp.tanh(dense("l1", b[0])))
    return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean()
  return params, (x, y), loss


def _expected(params, batch, loss, scale=1.0):
  """float64 per-example gradients, then the NumPy estimators."""
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    b64 = jax.tree.map(lambda a: jnp.asarray(a) if a.dtype.kind == "i"
                       else jnp.asarray(a, jnp.float64), batch)
    grads = [jax.tree.leaves(jax.grad(lambda p, b: scale * loss(p, b))(
        p64, jax.tree.map(lambda a, i=i: a[i:i + 1], b64)))
             for i in range(batch[0].shape[0])]
  return reference.noise_scale([[np.asarray(g) for g in ex] for ex in grads])


@pytest.mark.parametrize("problem", [_linear, _mlp])
@pytest.mark.parametrize("probed", [False, True])
def test_matches_float64_estimators(problem, probed):
  params, batch, loss = problem()
  fn = loss if probed else (lambda p, b: loss(p, b))
  _, _, est = jax.jit(lambda p, b: normopt.gradient_noise_scale(
      fn, p, b, probed=probed))(params, batch)
  simple, trace, grad_sq = _expected(params, batch, loss)
  np.testing.assert_allclose(float(est.simple), simple, rtol=1e-4)
  np.testing.assert_allclose(float(est.trace), trace, rtol=1e-4)
  np.testing.assert_allclose(float(est.grad_sq), grad_sq, rtol=1e-4)
  # The blocks partition the leaves: per-block estimators sum to the totals.
  np.testing.assert_allclose(sum(float(v) for v in jax.tree.leaves(
      est.block_trace)), trace, rtol=1e-4)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("probed", [False, True])
def test_simple_noise_scale_is_exact_at_extreme_loss_scales(scale, probed):
  params, batch, loss = _linear()
  scaled = ((lambda p, b, pr: scale * loss(p, b, pr)) if probed
            else (lambda p, b: scale * loss(p, b)))
  _, _, est = normopt.gradient_noise_scale(scaled, params, batch,
                                           probed=probed)
  simple, _, _ = _expected(params, batch, loss)
  np.testing.assert_allclose(float(est.simple), simple, rtol=1e-4)


def test_labelled_blocks():
  params, batch, loss = _mlp()
  labels = {"l1": {"kernel": "l1", "bias": "l1"},
            "l2": {"kernel": "l2", "bias": "l2"}}
  _, _, est = normopt.gradient_noise_scale(loss, params, batch, blocks=labels)
  assert set(est.block_trace) == {"l1", "l2"}
  np.testing.assert_allclose(
      float(est.block_trace["l1"] + est.block_trace["l2"]), float(est.trace),
      rtol=1e-5)


def test_batch_of_one_is_an_error():
  params, batch, loss = _linear()
  with pytest.raises(ValueError, match="at least 2"):
    normopt.gradient_noise_scale(loss, params,
                                 jax.tree.map(lambda a: a[:1], batch))


def test_tracker_averages_numerator_and_denominator_without_retracing():
  params, batch, loss = _linear()
  tx = optax.chain(normopt.track_noise_scale(0.8), normopt.sngm(0.05))
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, batch):
    _, grads, est = normopt.gradient_noise_scale(loss, params, batch)
    updates, state = tx.update(grads, state, params, noise_estimate=est)
    return optax.apply_updates(params, updates), state, est

  state = tx.init(params)
  traces, grad_sqs = [], []
  for i in range(6):
    sub = jax.tree.map(lambda a, i=i: jnp.roll(a, 5 * i, 0)[:16], batch)
    params, state, est = step(params, state, sub)
    traces.append(float(est.trace))
    grad_sqs.append(float(est.grad_sq))
  weights = [0.2 * 0.8 ** (5 - i) for i in range(6)]
  want = np.dot(weights, traces) / np.dot(weights, grad_sqs)
  np.testing.assert_allclose(float(normopt.noise_scale_of(state)), want,
                             rtol=1e-5)


def test_tracker_ignores_steps_without_an_estimate():
  tx = normopt.track_noise_scale()
  g = {"w": jnp.ones(3)}
  u, state = tx.update(g, tx.init(g))
  assert u is g and int(state.count) == 0
