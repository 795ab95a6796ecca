"""Long runs: bad hyperparameters, saturating counters, no retracing,
checkpoints that continue bitwise."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import normopt
from normopt import schedules
from tests import registry

NAMES = sorted(registry.ALIASES)
INT32_MAX = 2**31 - 1


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
          "b": jnp.asarray(rng.standard_normal(3), jnp.float32)}


def _grads(params, step):
  """A deterministic gradient sequence that depends on the params."""
  return jax.tree.map(lambda w: 0.5 * w + jnp.sin(step + w), params)


def _train_step(name, tx):
  def step(params, state, t):
    g = _grads(params, t)
    extra = registry.extra_args(name, g, params,
                                second_grads=jax.tree.map(jnp.cos, g))
    updates, state = tx.update(g, state, params, **extra)
    return optax.apply_updates(params, updates), state
  return step


def _run(name, tx, params, state, start, steps):
  body = jax.jit(_train_step(name, tx))
  for step in range(start, start + steps):
    params, state = body(params, state, jnp.float32(step))
  return params, state


# name -> the hyperparameters it validates, each with bad values.
BAD = {
    "learning_rate": [-0.1, math.nan, math.inf],
    "weight_decay": [-1e-4, math.nan],
    "beta": [1.0, -0.1, math.nan],
    "momentum": [1.0, -0.1],
    "nu": [1.5, -0.1],
    "eps": [-1e-8],
    "trust_coefficient": [-0.01],
    "gradient_bound": [0.0, -1.0],
}


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameters_are_named(name):
  factory, kwargs = registry.ALIASES[name]
  import inspect
  accepted = inspect.signature(factory).parameters
  tried = 0
  for arg, values in BAD.items():
    if arg not in accepted:
      continue
    for value in values:
      with pytest.raises(ValueError, match=arg):
        factory(**{**kwargs, arg: value})
      tried += 1
  assert tried >= 4


def test_bad_extra_arguments_are_named():
  params = _params()
  g = _grads(params, 0.0)
  tx = normopt.clars(1.0, mask=True)
  with pytest.raises(ValueError, match="per_example_norms"):
    tx.update(g, tx.init(params), params,
              per_example_norms={"w": jnp.ones(3), "b": jnp.ones(())})
  with pytest.raises(ValueError, match="per_example_norms"):
    tx.update(g, tx.init(params), params, per_example_norms={"w": 1.0})
  tx = normopt.adaptive_nigt()
  with pytest.raises(ValueError, match="second_grads"):
    tx.update(g, tx.init(params), params,
              second_grads={"w": jnp.ones((3, 5)), "b": g["b"]})


@pytest.mark.parametrize("name", NAMES)
def test_counters_saturate_and_schedules_stay_finite(name):
  """Every int32 step counter set to 2^31 - 1: one more step keeps it
  there (optax.safe_increment), with an epoch-keyed learning-rate schedule
  evaluated at that step, and the update is finite."""
  lr = schedules.per_step(schedules.cosine(0.1, 90), schedules.step_to_epoch(
      50_000, schedules.exponential_batch(128, 2, interval=10), 90))
  tx = registry.make(name, learning_rate=lr)
  params = _params()
  state = jax.tree.map(
      lambda x: jnp.full_like(x, INT32_MAX) if x.dtype == jnp.int32 else x,
      tx.init(params))
  counters = [x for x in jax.tree.leaves(state) if x.dtype == jnp.int32]
  assert counters, "every method counts its steps"
  new_params, new_state = _run(name, tx, params, state, 0, 1)
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(
      new_params))
  for x in jax.tree.leaves(new_state):
    if x.dtype == jnp.int32:
      assert int(x) == INT32_MAX


@pytest.mark.parametrize("schedule", [
    schedules.constant(0.1), schedules.sqrt_decay(0.1),
    schedules.inverse_decay(0.1), schedules.cosine(0.1, 100),
    schedules.polynomial(0.1, 100, power=2.0),
    schedules.step_decay(0.1, 0.5, 30), schedules.increasing_beta(0.9)])
@pytest.mark.parametrize("batch", ["constant", "growing"])
def test_epoch_schedules_finite_at_step_2_31(schedule, batch):
  """Epochs from steps up to 2^31 - 1 (with one example per epoch for the
  constant batch, i.e. epoch = step), then the schedule: finite, >= 0."""
  sizes = (schedules.constant_batch(1) if batch == "constant" else
           schedules.exponential_batch(32, 2, interval=1))
  lr = jax.jit(schedules.per_step(schedule, schedules.step_to_epoch(
      1 if batch == "constant" else 50_000, sizes, 100)))
  values = [float(lr(jnp.int32(k))) for k in (0, 12345, INT32_MAX - 1,
                                               INT32_MAX)]
  assert all(math.isfinite(v) and v >= 0 for v in values), values


@pytest.mark.parametrize("name", NAMES)
def test_traces_once_with_injected_hyperparams_and_schedules(name):
  """10 steps with new gradients and a new injected learning rate each step
  (and a schedule for beta where the method has one): one trace."""
  chex.clear_trace_counter()
  factory, kwargs = registry.ALIASES[name]
  tx = optax.inject_hyperparams(factory)(**kwargs)
  params = _params()
  state = tx.init(params)

  step = jax.jit(chex.assert_max_traces(_train_step(name, tx), n=1))

  for t in range(10):
    state.hyperparams["learning_rate"] = jnp.asarray(
        kwargs["learning_rate"] * (1 + 0.1 * t), jnp.float32)
    params, state = step(params, state, jnp.float32(t))
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name", NAMES)
def test_orbax_round_trip_continues_bitwise(name, tmp_path):
  """Save after 5 steps, restore with a target (NamedTuples come back as
  NamedTuples), continue 50 steps: bitwise equal to never stopping."""
  tx = registry.make(name)
  params, state = _run(name, tx, _params(), tx.init(_params()), 0, 5)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "state": state})
  checkpointer.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                        {"params": params, "state": state})
  restored = checkpointer.restore(tmp_path / "ckpt", target)
  assert jax.tree.structure(restored) == jax.tree.structure(
      {"params": params, "state": state})
  assert type(restored["state"]) is type(state)
  want = _run(name, tx, params, state, 5, 50)
  got = _run(name, tx, restored["params"], restored["state"], 5, 50)
  chex.assert_trees_all_equal(got, want)
