"""Every method under sharded jit, shard_map with axis_name, and data-parallel
pmap equals the single-device run (8 forced CPU devices, see conftest)."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import normopt
from tests import registry

NAMES = sorted(registry.ALIASES)
# Orthogonalization needs whole matrices: with axis_name (leaves are
# shards) these refuse with a clear error; sharded jit works.
NEEDS_WHOLE_MATRICES = ("muon", "normuon", "scion")
STEPS = 20
DEVICES = 8
ATOL = 1e-6

# Leaves sharded along different axes; every leaf splits over 8 devices.
SHAPES = {"w1": (16, 6), "w2": (3, 16), "b1": (8,), "emb": (2, 4, 8)}
SPECS = {"w1": P("x", None), "w2": P(None, "x"), "b1": P("x"),
         "emb": P(None, None, "x")}


def _mesh():
  assert jax.device_count() >= DEVICES, "conftest forces 8 CPU devices"
  return jax.make_mesh((DEVICES,), ("x",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def _problem(seed=0):
  """A separable quadratic with per-step noise: g_t = a*(w - c) + n_t.

  Elementwise, so a shard computes its own gradient; the noise sequences
  (and a second gradient's, for adaptive NIGT) are drawn up front.
  """
  rng = np.random.default_rng(seed)
  draw = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
  params = {k: draw(*s) for k, s in SHAPES.items()}
  scale = {k: jnp.abs(draw(*s)) + 0.5 for k, s in SHAPES.items()}
  centre = {k: draw(*s) for k, s in SHAPES.items()}
  noise = {k: 0.3 * draw(STEPS, *s) for k, s in SHAPES.items()}
  noise2 = {k: 0.3 * draw(STEPS, *s) for k, s in SHAPES.items()}
  example_norms = {k: jnp.abs(draw(STEPS)) + 1.0 for k in SHAPES}
  return params, (scale, centre, noise, noise2, example_norms)


def _train(name, params, data, axis_name=None):
  """20 steps; pure, so it runs unchanged under jit and inside shard_map."""
  scale, centre, noise, noise2, example_norms = data
  reduces = "axis_name" in inspect.signature(registry.ALIASES[name][0]).parameters
  kwargs = {"axis_name": axis_name} if axis_name and reduces else {}
  tx = registry.make(name, **kwargs)

  def step(carry, t):
    params, state = carry
    at = lambda tree: jax.tree.map(lambda x: x[t], tree)  # noqa: E731
    g = jax.tree.map(lambda a, w, c, n: a * (w - c) + n, scale, params,
                     centre, at(noise))
    g2 = jax.tree.map(lambda a, w, c, n: a * (w - c) + n, scale, params,
                      centre, at(noise2))
    extra = registry.extra_args(name, g, params, second_grads=g2,
                                example_norms=at(example_norms))
    updates, state = tx.update(g, state, params, **extra)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)),
                                jnp.arange(STEPS))
  return params


@functools.cache
def _single_device(name):
  params, data = _problem()
  return jax.device_get(jax.jit(functools.partial(_train, name))(params,
                                                                 data))


def _data_specs():
  leaf = {k: SPECS[k] for k in SHAPES}
  stepped = {k: P(None, *SPECS[k]) for k in SHAPES}
  return (leaf, leaf, stepped, stepped, {k: P() for k in SHAPES})


def _assert_close(got, want):
  for k in SHAPES:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], atol=ATOL,
                               rtol=0, err_msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_sharded_jit_matches_single_device(name):
  """(a) GSPMD: params and state sharded along different axes; jit alone
  inserts the cross-device reductions of the norms."""
  mesh = _mesh()
  params, data = _problem()
  put = lambda tree, specs: jax.tree.map(  # noqa: E731
      lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)
  params = put(params, SPECS)
  data = tuple(put(d, s) for d, s in zip(data, _data_specs()))
  out = jax.jit(functools.partial(_train, name))(params, data)
  for k in SHAPES:
    assert out[k].sharding.is_equivalent_to(NamedSharding(mesh, SPECS[k]),
                                            out[k].ndim), (k, out[k].sharding)
  _assert_close(out, _single_device(name))


@pytest.mark.parametrize("name", NAMES)
def test_shard_map_with_axis_name_matches_single_device(name):
  """(b) each device holds a shard of every leaf; axis_name psums the
  squared norms. (Without it shard_map refuses: the norms would vary
  across devices while the optimizer state is declared invariant.)"""
  mesh = _mesh()
  params, data = _problem()
  run = lambda axis: jax.jit(jax.shard_map(  # noqa: E731
      functools.partial(_train, name, axis_name=axis), mesh=mesh,
      in_specs=(SPECS, _data_specs()), out_specs=SPECS))
  if name in NEEDS_WHOLE_MATRICES:
    with pytest.raises(ValueError, match="need each matrix whole"):
      run("x")(params, data)
    return
  _assert_close(run("x")(params, data), _single_device(name))


def _classifier_problem(seed=0, batch=32):
  rng = np.random.default_rng(seed)
  params = {"kernel": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32),
            "bias": jnp.zeros((4,), jnp.float32)}
  xs = jnp.asarray(rng.standard_normal((STEPS, 2, batch, 6)), jnp.float32)
  ys = jnp.asarray(rng.integers(0, 4, (STEPS, 2, batch)))
  return params, xs, ys


def _loss(params, batch):
  x, y = batch
  logits = x @ params["kernel"] + params["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _data_parallel_train(name, params, xs, ys, axis_name=None):
  """Gradients, second gradients (second half-batch) and CLARS norms
  averaged over ``axis_name`` before the update. A fifth of the usual
  learning rate: rounding differences of the reduction order grow with it."""
  tx = registry.make(name, learning_rate=0.2 * registry.ALIASES[name][1][
      "learning_rate"])
  mean = (lambda t: t) if axis_name is None else functools.partial(
      jax.lax.pmean, axis_name=axis_name)

  def step(carry, batch):
    params, state = carry
    (x, x2), (y, y2) = batch
    _, g, norms = normopt.per_example_block_norms(_loss, params, (x, y))
    g2 = jax.grad(_loss)(params, (x2, y2))
    g, g2, norms = mean((g, g2, norms))
    extra = registry.extra_args(name, g, params, second_grads=g2,
                                example_norms=norms)
    updates, state = tx.update(g, state, params, **extra)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), (xs, ys))
  return params


def _split(xs, ys):
  """(steps, 2, 32, ...) -> per device (devices, steps, 2, 4, ...)."""
  per = xs.shape[2] // DEVICES
  xs = xs.reshape(STEPS, 2, DEVICES, per, -1).transpose(2, 0, 1, 3, 4)
  ys = ys.reshape(STEPS, 2, DEVICES, per).transpose(2, 0, 1, 3)
  return xs, ys


@pytest.mark.parametrize("name", NAMES)
def test_data_parallel_pmap_matches_single_device(name):
  """(c) pmap over 8 replicas of 4 examples each = one device with 32;
  the replicas stay bitwise identical."""
  params, xs, ys = _classifier_problem()
  want = jax.jit(functools.partial(_data_parallel_train, name))(params, xs,
                                                                ys)
  replicated = jax.tree.map(lambda x: jnp.broadcast_to(x, (DEVICES, *x.shape)),
                            params)
  out = jax.pmap(functools.partial(_data_parallel_train, name,
                                   axis_name="data"),
                 axis_name="data", devices=jax.devices()[:DEVICES])(
                     replicated, *_split(xs, ys))
  normopt.assert_replicated(out, stacked=True)
  for k in params:
    np.testing.assert_allclose(np.asarray(out[k][0]), np.asarray(want[k]),
                               atol=ATOL, rtol=0, err_msg=k)


def test_assert_replicated_catches_a_missing_pmean():
  params, xs, ys = _classifier_problem()
  replicated = jax.tree.map(lambda x: jnp.broadcast_to(x, (DEVICES, *x.shape)),
                            params)
  out = jax.pmap(functools.partial(_data_parallel_train, "sngm"),
                 axis_name="data", devices=jax.devices()[:DEVICES])(
                     replicated, *_split(xs, ys))
  with pytest.raises(AssertionError, match=r"params\['bias'\] differs"):
    normopt.assert_replicated(out, stacked=True)
  # Under jit, replicated jax.Arrays are checked shard by shard.
  mesh = _mesh()
  same = jax.device_put(params, NamedSharding(mesh, P()))
  normopt.assert_replicated(same)
