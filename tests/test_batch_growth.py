"""normopt.batch_growth: exact whole-batch statistics under accumulation
(against the concatenated batch and a float64 NumPy noise-scale reference),
optax.MultiSteps bitwise when the batch is fixed, k monotone and bounded in
powers of growth, no retrace, orbax resume, and bad arguments."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import normopt
from tests import reference


def _mlp_problem(n=16, d=5, h=6, k=3, seed=0, dtype=jnp.float64):
  rng = np.random.default_rng(seed)
  params = {"l1": {"kernel": jnp.asarray(rng.normal(size=(d, h)) / 2, dtype),
                   "bias": jnp.asarray(rng.normal(size=h) / 4, dtype)},
            "l2": {"kernel": jnp.asarray(rng.normal(size=(h, k)) / 2, dtype),
                   "bias": jnp.asarray(rng.normal(size=k) / 4, dtype)}}

  def batch(step):
    r = np.random.default_rng(100 + step)
    return (jnp.asarray(r.normal(size=(n, d)), dtype),
            jnp.asarray(r.integers(0, k, n)))

  def loss(p, b):
    hidden = jnp.tanh(b[0] @ p["l1"]["kernel"] + p["l1"]["bias"])
    logits = hidden @ p["l2"]["kernel"] + p["l2"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean()

  return params, batch, loss


def _example_grads(loss, params, b):
  """float64 per-example gradients as block lists (leaves order)."""
  per_example = jax.jit(jax.vmap(
      lambda x, y: jax.grad(loss)(params, (x[None], y[None]))))(*b)
  leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(per_example)]
  return [[g[i] for g in leaves] for i in range(b[0].shape[0])]


_METHODS = {
    "clars": lambda: normopt.clars(0.5, trust_coefficient=0.02, mask=True),
    "sngm": lambda: normopt.sngm(0.3),
    "nigt": lambda: normopt.nigt(0.3),
    "lamb": lambda: normopt.lamb(0.01, weight_decay=0.01, mask=True),
}


@pytest.mark.parametrize("name", sorted(_METHODS))
def test_accumulated_step_equals_concatenated_batch(name):
  """k micro-batches of b examples, accumulated by batch_growth, give the
  step of the inner optimizer on the concatenated k·b examples (CLARS's mean
  per-example norms and the noise-scale estimators included), over two
  optimizer steps; the estimators also match a float64 NumPy computation
  from explicit per-example gradients."""
  k, b = 4, 4
  with jax.enable_x64(True):
    params, batch, loss = _mlp_problem(n=k * b)

    def inner():
      return optax.chain(normopt.track_noise_scale(0.0), _METHODS[name]())

    @jax.jit
    def extras(p, data):
      _, g, norms = normopt.per_example_block_norms(loss, p, data)
      _, _, est = normopt.gradient_noise_scale(loss, p, data)
      return g, {"per_example_norms": norms, "noise_estimate": est}

    grown = normopt.batch_growth(inner(), micro_batch=b, max_batch=k * b,
                                 min_batch=k * b)
    whole = inner()
    grown_update, whole_update = jax.jit(grown.update), jax.jit(whole.update)
    p_acc, s_acc = params, grown.init(params)
    p_one, s_one = params, whole.init(params)
    for step in range(2):
      data = batch(step)
      for j in range(k):
        g, extra = extras(p_acc, jax.tree.map(
            lambda a, j=j: a[j * b:(j + 1) * b], data))
        u, s_acc = grown_update(g, s_acc, p_acc, **extra)
        if j < k - 1:
          assert all(float(jnp.max(jnp.abs(x))) == 0
                     for x in jax.tree.leaves(u))
      p_acc = optax.apply_updates(p_acc, u)
      g, extra = extras(p_one, data)
      u, s_one = whole_update(g, s_one, p_one, **extra)
      expected = reference.noise_scale(_example_grads(loss, p_one, data))
      p_one = optax.apply_updates(p_one, u)
      chex.assert_trees_all_close(p_acc, p_one, rtol=1e-6, atol=1e-12)
      tracked = s_acc.multi_steps.inner_opt_state[0]
      np.testing.assert_allclose(
          [float(tracked.trace), float(tracked.grad_sq)], expected[1:],
          rtol=1e-6)
    assert int(s_acc.multi_steps.gradient_step) == 2


@pytest.mark.parametrize("name", ["sngm", "lars", "lamb"])
def test_fixed_batch_is_multisteps_bitwise(name):
  inner = {"sngm": lambda: normopt.sngm(0.1),
           "lars": lambda: normopt.lars(1.0),
           "lamb": lambda: normopt.lamb(0.01)}[name]
  params, _, _ = _mlp_problem(dtype=jnp.float32)
  grown = normopt.batch_growth(inner(), micro_batch=8, max_batch=24,
                               min_batch=24, growth=3)
  multi = optax.MultiSteps(inner(), every_k_schedule=3)
  s_grown, s_multi = grown.init(params), multi.init(params)
  p_grown = p_multi = params
  rng = np.random.default_rng(1)
  step_grown, step_multi = jax.jit(grown.update), jax.jit(multi.update)
  for _ in range(10):
    g = jax.tree.map(lambda x: jnp.asarray(
        rng.normal(size=x.shape), x.dtype), params)
    u_grown, s_grown = step_grown(g, s_grown, p_grown)
    u_multi, s_multi = step_multi(g, s_multi, p_multi)
    p_grown = optax.apply_updates(p_grown, u_grown)
    p_multi = optax.apply_updates(p_multi, u_multi)
  chex.assert_trees_all_equal(p_grown, p_multi)
  chex.assert_trees_all_equal(s_grown.multi_steps, s_multi)


def _regression(n_examples=4096, d=8, noise=1.0):
  """Noisy linear regression: as training nears the optimum ‖G‖² falls
  while tr(Σ) stays, so the noise scale (and with it k) grows."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n_examples, d)), jnp.float32)
  w_true = rng.normal(size=d)
  y = jnp.asarray(np.asarray(x) @ w_true + noise * rng.normal(size=n_examples),
                  jnp.float32)

  def loss(p, b):
    return 0.5 * jnp.mean((b[0] @ p["w"] - b[1]) ** 2)

  return {"w": jnp.zeros(d, jnp.float32)}, (x, y), loss


def _growing_run(steps, micro=8, max_batch=256, state=None, params=None,
                 start=0):
  init_params, (x, y), loss = _regression()
  tx = normopt.batch_growth(optax.sgd(0.05), micro_batch=micro,
                            max_batch=max_batch, decay=0.5)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, s, b):
    _, g, est = normopt.gradient_noise_scale(loss, p, b)
    u, s = tx.update(g, s, p, noise_estimate=est)
    return optax.apply_updates(p, u), s

  params = init_params if params is None else params
  state = tx.init(params) if state is None else state
  ks, used = [], []  # k after each call; k of each optimizer step
  for i in range(start, start + steps):
    j = (i * micro) % x.shape[0]
    k, done = int(state.accumulation), int(state.multi_steps.gradient_step)
    params, state = step(params, state, (x[j:j + micro], y[j:j + micro]))
    ks.append(int(state.accumulation))
    if int(state.multi_steps.gradient_step) > done:
      used.append(k)
  return params, state, ks, used


def test_k_grows_monotonically_in_powers_within_bounds_without_retrace():
  chex.clear_trace_counter()
  _, state, ks, used = _growing_run(600)
  assert ks[0] == 1 and max(ks) > 1, ks  # it grew (no retrace: one trace)
  assert all(b >= a for a, b in itertools.pairwise(ks))
  assert set(ks) <= {1, 2, 4, 8, 16, 32}
  assert all(b in (a, 2 * a) for a, b in itertools.pairwise(used))
  # The recorded schedule replays the run: the k of every optimizer step.
  schedule = normopt.replay_schedule(state)
  assert [int(schedule(t)) for t in range(len(used))] == used


def test_resume_from_orbax_continues_bitwise(tmp_path):
  chex.clear_trace_counter()
  params_full, state_full, ks_full, _ = _growing_run(300)
  chex.clear_trace_counter()
  params, state, ks, _ = _growing_run(150)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", (params, state))
  checkpointer.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, (params, state))
  params, state = checkpointer.restore(tmp_path / "ckpt", target)
  assert isinstance(state, normopt.BatchGrowthState)
  chex.clear_trace_counter()
  params, state, ks_rest, _ = _growing_run(150, state=state, params=params,
                                           start=150)
  assert ks + ks_rest == ks_full
  chex.assert_trees_all_equal((params, state), (params_full, state_full))


@pytest.mark.parametrize("kwargs, match", [
    ({"micro_batch": 1, "max_batch": 8}, "micro_batch"),
    ({"micro_batch": 4, "max_batch": 24}, "max_batch"),
    ({"micro_batch": 4, "max_batch": 16, "min_batch": 6}, "min_batch"),
    ({"micro_batch": 4, "max_batch": 8, "min_batch": 16}, "max_batch"),
    ({"micro_batch": 4, "max_batch": 16, "growth": 1}, "growth"),
    ({"micro_batch": 4, "max_batch": 16, "decay": 1.0}, "decay"),
    ({"micro_batch": 4, "max_batch": 16, "noise_scale_multiple": 0.0},
     "noise_scale_multiple"),
])
def test_bad_arguments_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    normopt.batch_growth(optax.sgd(0.1), **kwargs)


def test_without_estimates_the_batch_stays_at_min_batch():
  params = {"w": jnp.zeros(3)}
  tx = normopt.batch_growth(optax.sgd(0.1), micro_batch=2, max_batch=8,
                            min_batch=4)
  state = tx.init(params)
  for _ in range(10):
    _, state = tx.update({"w": jnp.ones(3)}, state, params)
  assert int(state.accumulation) == 2
  assert int(state.multi_steps.gradient_step) == 5
