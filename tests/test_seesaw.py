"""normopt.seesaw_schedule against a float64 NumPy simulation of Seesaw's
rule, its compile-once guarantee, and its equality with optax.MultiSteps
when the batch does not grow."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt


def cosine64(peak, steps, warmup=0):
  """Linear warmup then cosine decay to 0, in float64."""
  def f(s):
    if s < warmup:
      return peak * s / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * min(s - warmup, steps - warmup)
                                      / (steps - warmup)))
  return f


def linear64(peak, steps):
  return lambda s: peak * (1 - min(s, steps) / steps)


def simulate(base, total, micro, max_micro, factor, gamma):
  """Seesaw step by step: before each step, enter every phase whose
  threshold (peak / factor^k, after the peak) the base schedule has reached
  at the examples seen; the step takes factor^k base batches at
  lr = base(position) * factor^(k gamma). A value within 1e-6 of a
  threshold has reached it (documented: float32 rounding)."""
  values = [base(s) for s in range(total)]
  peak_at = int(np.argmax(values))
  peak = values[peak_at]
  max_k = round(math.log(max_micro / micro, factor))
  position, k, lrs, ks = 0, 0, [], []
  while position < total:
    while (k < max_k and position >= peak_at
           and base(position) <= peak / factor ** (k + 1) * (1 + 1e-6)):
      k += 1
    lrs.append(base(position) * factor ** (k * gamma))
    ks.append(micro * factor ** k)
    position += factor ** k
  return np.array(lrs), np.array(ks)


CASES = {
    "cosine": (lambda: optax.cosine_decay_schedule(0.1, 1000),
               cosine64(0.1, 1000), 1000, 1, 8, 2, 0.5),
    "warmup_cosine": (lambda: optax.warmup_cosine_decay_schedule(
        0.0, 0.3, 50, 600), cosine64(0.3, 600, 50), 600, 2, 16, 2, 0.5),
    "linear_sgd": (lambda: optax.linear_schedule(1.0, 0.0, 900),
                   linear64(1.0, 900), 900, 1, 9, 3, 1.0),
    "capped_early": (lambda: optax.cosine_decay_schedule(0.1, 400),
                     cosine64(0.1, 400), 400, 4, 8, 2, 0.5),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_float64_simulation(case):
  make, base64, total, micro, max_micro, factor, gamma = CASES[case]
  s = normopt.seesaw_schedule(make(), total, max_micro_batches=max_micro,
                              micro_batches=micro, factor=factor,
                              batch_exponent=gamma)
  lrs, ks = simulate(base64, total, micro, max_micro, factor, gamma)
  assert s.num_steps == len(lrs)
  steps = jnp.arange(s.num_steps)
  np.testing.assert_array_equal(jax.vmap(s.micro_batches)(steps), ks)
  np.testing.assert_allclose(jax.vmap(s.learning_rate)(steps), lrs,
                             rtol=2e-5, atol=1e-7)
  changes = [n for n in range(1, len(ks)) if ks[n] != ks[n - 1]]
  assert [n for n in s.boundaries if n < s.num_steps] == sorted(set(
      b for b in s.boundaries if b < s.num_steps))
  assert set(changes) <= set(s.boundaries)
  # Every example of the base schedule is seen, the last step rounding up.
  seen = int(np.sum(ks)) // micro
  assert total <= seen < total + max_micro // micro


def test_keeps_lr_over_sqrt_batch_of_the_base():
  base = optax.cosine_decay_schedule(1.0, 2000)
  s = normopt.seesaw_schedule(base, 2000, max_micro_batches=16)
  n = jnp.arange(s.num_steps)
  k = jax.vmap(s.micro_batches)(n)
  position = jnp.cumsum(k) - k  # base step each optimizer step starts at
  np.testing.assert_allclose(jax.vmap(s.learning_rate)(n) / jnp.sqrt(k),
                             jax.vmap(base)(position), rtol=1e-5, atol=1e-7)
  # The first half of a cosine runs at the base batch; the steps saved,
  # 1 - 1257/2000 = 37%, are the paper's ~36% for cosine.
  assert int(k[-1]) == 16 and 0.6 < s.num_steps / 2000 < 0.66


def test_compiles_once():
  s = normopt.seesaw_schedule(optax.cosine_decay_schedule(0.1, 300), 300,
                              max_micro_batches=4)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def both(count):
    return s.learning_rate(count), s.micro_batches(count)

  for n in range(s.num_steps):
    both(jnp.int32(n))


@pytest.mark.parametrize("base", ["constant", "no_growth"])
def test_equals_multisteps_with_fixed_k_bitwise(base):
  if base == "constant":  # never decays: the batch never grows
    schedule = optax.constant_schedule(0.05)
    s = normopt.seesaw_schedule(schedule, 100, micro_batches=4,
                                max_micro_batches=16)
  else:  # decays, but the batch may not grow
    schedule = optax.cosine_decay_schedule(0.05, 30)
    s = normopt.seesaw_schedule(schedule, 30, micro_batches=4,
                                max_micro_batches=4)
  ours = optax.MultiSteps(normopt.sngm(s.learning_rate, beta=0.9),
                          every_k_schedule=s.micro_batches)
  plain = optax.MultiSteps(normopt.sngm(schedule, beta=0.9),
                           every_k_schedule=4)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)}
  p1, p2 = params, params
  s1, s2 = ours.init(params), plain.init(params)
  step1, step2 = jax.jit(ours.update), jax.jit(plain.update)
  for _ in range(24):
    g = {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)}
    u1, s1 = step1(g, s1, p1)
    u2, s2 = step2(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  np.testing.assert_array_equal(p1["w"], p2["w"])
  assert int(s1.gradient_step) == int(s2.gradient_step) == 6


@pytest.mark.parametrize("kwargs, match", [
    ({"max_micro_batches": 6}, "max_micro_batches"),
    ({"max_micro_batches": 8, "factor": 2.5}, "factor"),
    ({"max_micro_batches": 8, "micro_batches": 0}, "micro_batches"),
    ({"max_micro_batches": 8, "batch_exponent": -1.0}, "batch_exponent"),
])
def test_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    normopt.seesaw_schedule(optax.constant_schedule(0.1), 10, **kwargs)


def test_rejects_a_negative_base_schedule():
  with pytest.raises(ValueError, match="learning_rate"):
    normopt.seesaw_schedule(optax.linear_schedule(0.1, -0.1, 10), 10,
                            max_micro_batches=2)
