"""Epoch schedules, the step -> epoch map and growing batches (QHM paper)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normopt import schedules
from tests import registry
from tests.problems import LeastSquares, example_norms

EPOCHS = np.arange(0, 300)

FORMULAS = [
    (schedules.constant(0.1), lambda m: 0.1),
    (schedules.sqrt_decay(0.5), lambda m: 0.5 / math.sqrt(m + 1)),
    (schedules.inverse_decay(0.5), lambda m: 0.5 / (m + 1)),
    (schedules.cosine(0.5, 300, end_value=0.01),
     lambda m: 0.01 + 0.49 / 2 * (1 + math.cos(m * math.pi / 299))),
    (schedules.polynomial(0.5, 300, power=2.0, end_value=0.01),
     lambda m: 0.01 + 0.49 * (1 - m / 300) ** 2),
    (schedules.step_decay(0.9, 0.5, 30), lambda m: 0.9 * 0.5 ** (m // 30)),
    (schedules.increasing_beta(0.5),
     lambda m: 1 - 0.5 / (m + 1) ** 0.75),
    (schedules.exponential_batch(8, 2, 30), lambda m: 8 * 2 ** (m // 30)),
    (schedules.exponential_batch(8, 2, 30, max_batch=1000),
     lambda m: min(8 * 2 ** (m // 30), 1000)),
    (schedules.constant_batch(128), lambda m: 128),
]


@pytest.mark.parametrize("index", range(len(FORMULAS)))
def test_schedule_matches_formula(index):
  schedule, formula = FORMULAS[index]
  expected = np.array([formula(m) for m in EPOCHS])
  np.testing.assert_allclose(np.asarray(jax.jit(schedule)(EPOCHS)), expected,
                             rtol=1e-6)
  # Python ints work too.
  np.testing.assert_allclose(float(schedule(37)), formula(37), rtol=1e-6)


def test_cosine_single_epoch_and_finite_far_out():
  assert float(schedules.cosine(0.3, 1)(0)) == pytest.approx(0.3)
  for schedule, _ in FORMULAS:
    assert np.isfinite(np.asarray(schedule(jnp.int32(2**31 - 1))))
  assert int(schedules.exponential_batch(8, 2, 1)(10**6)) == 2**30


def _epoch_by_loop(n, sizes, step):
  """The epoch of ``step`` by walking the epochs one at a time."""
  start, m = 0, 0
  while True:
    b = sizes[min(m, len(sizes) - 1)]
    length = -(-n // b)
    if step < start + length:
      return m
    start += length
    m += 1


@pytest.mark.parametrize("n,b0,delta,interval,cap", [
    (1000, 8, 2, 3, None), (1000, 8, 2, 3, 64), (777, 10, 3, 1, 500),
    (50000, 128, 2, 5, 4096), (64, 64, 2, 2, None)])
def test_step_to_epoch_matches_loop(n, b0, delta, interval, cap):
  num_epochs = 12
  batch = schedules.exponential_batch(b0, delta, interval, cap)
  epoch_of = jax.jit(schedules.step_to_epoch(n, batch, num_epochs))
  sizes = [int(batch(m)) for m in range(num_epochs)]
  total = sum(-(-n // b) for b in sizes) + 50
  steps = np.arange(total)
  got = np.asarray(epoch_of(steps))
  expected = [_epoch_by_loop(n, sizes, k) for k in steps]
  np.testing.assert_array_equal(got, expected)


@given(st.integers(1, 5000), st.integers(1, 64), st.integers(1, 3),
       st.integers(1, 5), st.integers(0, 10**6))
def test_step_to_epoch_monotone_and_exact_at_boundaries(n, b0, delta, interval,
                                                         step):
  batch = schedules.exponential_batch(b0, delta, interval, max_batch=4096)
  epoch_of = schedules.step_to_epoch(n, batch, 10)
  e0, e1 = int(epoch_of(step)), int(epoch_of(step + 1))
  assert e1 in (e0, e0 + 1)
  # The first step of every tabulated epoch maps to that epoch, the step
  # before it to the previous one.
  start = 0
  for m in range(10):
    assert int(epoch_of(start)) == m
    if start:
      assert int(epoch_of(start - 1)) == m - 1
    start += -(-n // int(batch(m)))


def test_bad_arguments():
  with pytest.raises(ValueError, match="initial"):
    schedules.exponential_batch(0, 2, 1)
  with pytest.raises(ValueError, match="factor"):
    schedules.step_decay(0.9, 1.5, 10)
  with pytest.raises(ValueError, match="beta_min"):
    schedules.increasing_beta(1.0)
  with pytest.raises(ValueError, match="micro-batch"):
    schedules.check_divisible(schedules.exponential_batch(12, 2, 1), 8, 3)
  with pytest.raises(ValueError, match="power"):
    schedules.polynomial(0.1, 10, power=0)


MICRO = 8


def _growing(num_epochs=4):
  """Batch 16 then 32 (capped) on a 64-example epoch: k = 2, then 4."""
  batch = schedules.exponential_batch(2 * MICRO, 2, interval=1,
                                      max_batch=4 * MICRO)
  epoch_of = schedules.step_to_epoch(64, batch, num_epochs)
  return batch, epoch_of


@pytest.mark.parametrize("name", sorted(registry.ALIASES))
def test_accumulated_step_equals_big_batch_step(name):
  """k micro-batches through optax.MultiSteps == one step on the k·b batch."""
  with jax.enable_x64(True):
    p = LeastSquares(n=256, batch=4 * MICRO)
    batch, epoch_of = _growing()
    lr = schedules.per_step(schedules.inverse_decay(0.05), epoch_of)
    big_tx = registry.make(name, learning_rate=lr)
    multi = optax.MultiSteps(
        registry.make(name, learning_rate=lr),
        every_k_schedule=schedules.accumulation_steps(batch, MICRO, epoch_of))
    params_big = params_acc = p.params()
    state_big, state_acc = big_tx.init(params_big), multi.init(params_acc)
    grad = jax.jit(jax.grad(p.loss))
    big_update, multi_update = jax.jit(big_tx.update), jax.jit(multi.update)
    rng = np.random.default_rng(0)
    for t in range(8):  # epochs 0-3: 4 + 2 + 2 + ... steps; k = 2, 4, 4, ...
      k = int(batch(epoch_of(t))) // MICRO
      idx = rng.choice(256, k * MICRO, replace=False)
      x, y = jnp.asarray(p.x[idx]), jnp.asarray(p.y[idx])
      x2, y2 = jnp.asarray(p.x[idx[::-1]] * 0.9), jnp.asarray(p.y[idx[::-1]])

      def extra(params, x=x, y=y, x2=x2, y2=y2):
        # Extra arguments describe the whole batch; MultiSteps applies the
        # last micro-step's, so each micro-step is given the full-batch ones.
        return registry.extra_args(
            name, None, params, second_grads=grad(params, x2, y2),
            example_norms=example_norms(p.loss, params, x, y))

      g = grad(params_big, x, y)
      u, state_big = big_update(g, state_big, params_big, **extra(params_big))
      params_big = optax.apply_updates(params_big, u)
      extra_acc = extra(params_acc)
      for j in range(k):
        sl = slice(j * MICRO, (j + 1) * MICRO)
        g = grad(params_acc, x[sl], y[sl])
        u, state_acc = multi_update(g, state_acc, params_acc, **extra_acc)
        params_acc = optax.apply_updates(params_acc, u)
      chex.assert_trees_all_close(params_acc, params_big, rtol=1e-6,
                                  atol=1e-12)


def test_growing_batch_compiles_once():
  chex.clear_trace_counter()
  batch, epoch_of = _growing()
  tx = optax.MultiSteps(
      registry.make("qhm"),
      every_k_schedule=schedules.accumulation_steps(batch, MICRO, epoch_of))
  params = {"w": jnp.ones((3,))}

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, g):
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  state = tx.init(params)
  ks = []
  for i in range(40):
    ks.append(int(schedules.accumulation_steps(batch, MICRO, epoch_of)(
        state.gradient_step)))
    params, state = step(params, state, {"w": jnp.full((3,), 0.1 * i)})
  assert set(ks) == {2, 4}  # the batch grew (and stopped at the cap)
