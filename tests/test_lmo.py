"""Steepest descent under other norms: normalize_per_block(norm=...),
normopt.muon and normopt.signum, against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers as MDN

import normopt
from tests import reference

NAMES = ("sign", "rms", "col", "row", "spectral")
SHAPES = {"dense": (6, 3), "tall": (3, 7), "conv": (3, 3, 2, 4)}
CONV = MDN((0, 1, 2), 3)  # a Flax conv kernel (kh, kw, in, out)


def dims_of(tree):
  """Conv kernels read as (kh·kw·in, out); 2-D leaves by default."""
  return {k: CONV if np.ndim(v) == 4 else None for k, v in tree.items()}


def muon_dims_of(tree):
  """Muon's view of every leaf: None sends a leaf to the other optimizer."""
  return {k: CONV if np.ndim(v) == 4 else MDN() if np.ndim(v) == 2 else None
          for k, v in tree.items()}


def _tree(seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32)
          for k, s in SHAPES.items()}


@pytest.mark.parametrize("name", NAMES)
def test_direction_and_dual_norm_match_float64(name):
  g = _tree(1)
  tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm=name, exact_svd=True)
  u, state = tx.update(g, tx.init(g))
  for k in SHAPES:
    want, dual = reference.lmo_direction(name, np.asarray(g[k]))
    np.testing.assert_allclose(np.asarray(u[k]), want, rtol=2e-5, atol=2e-6,
                               err_msg=k)
    np.testing.assert_allclose(float(state.norms[k]), dual, rtol=2e-5)


def test_newton_schulz_matches_the_reference_iteration():
  g = _tree(2)
  with jax.enable_x64(True):
    g64 = jax.tree.map(lambda x: x.astype(jnp.float64), g)
    tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm="spectral", ns_steps=7)
    u, _ = tx.update(g64, tx.init(g64))
    for k in SHAPES:
      m = np.asarray(g64[k]).reshape(-1, SHAPES[k][-1])
      want = reference.newton_schulz(m, steps=7).reshape(SHAPES[k])
      np.testing.assert_allclose(np.asarray(u[k]), want, rtol=1e-10,
                                 atol=1e-12)
      # about orthogonal: singular values in Jordan et al.'s [0.7, 1.2]
      s = np.linalg.svd(np.asarray(u[k]).reshape(m.shape), compute_uv=False)
      assert s.min() > 0.6 and s.max() < 1.25, (k, s)


def _scaled_steps(tx, g, scale):
  """``tx``'s first step on ``g * scale`` the three ways XLA can see it: a
  jit argument, a closed-over constant, computed inside jit."""
  big = jax.tree.map(lambda x: x * scale, g)
  state = tx.init(g)
  return {
      "argument": jax.jit(tx.update)(big, state),
      "constant": jax.jit(lambda s: tx.update(big, s))(state),
      "computed": jax.jit(lambda x, s: tx.update(
          jax.tree.map(lambda a: a * scale, x), s))(g, state)}


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e12, 1e30])
@pytest.mark.parametrize("name", NAMES)
def test_directions_are_scale_invariant(name, scale):
  g = _tree(3)
  tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm=name)
  a, _ = jax.jit(tx.update)(g, tx.init(g))
  for how, (b, _) in _scaled_steps(tx, g, scale).items():
    for k in SHAPES:
      np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]),
                                 rtol=1e-5, atol=1e-6, err_msg=(k, how))


@pytest.mark.parametrize("scale", [1e-30, 1e30])
@pytest.mark.parametrize("name", NAMES)
def test_dual_norms_scale_with_the_gradient(name, scale):
  """The state's dual norms (sign's ℓ1 norm: one plain sum) are exact at
  1e±30 however XLA sees the gradient."""
  g = _tree(4)
  tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm=name)
  _, plain = jax.jit(tx.update)(g, tx.init(g))
  for how, (_, state) in _scaled_steps(tx, g, scale).items():
    for k in SHAPES:
      np.testing.assert_allclose(float(state.norms[k]),
                                 float(plain.norms[k]) * scale, rtol=1e-5,
                                 err_msg=(k, how))


@pytest.mark.parametrize("name", NAMES)
def test_zero_block_gives_zero_and_nan_propagates(name):
  g = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm=name)
  u, state = tx.update(g, tx.init(g))
  for x in [*jax.tree.leaves(u), *jax.tree.leaves(state)]:
    np.testing.assert_array_equal(np.asarray(x), 0.0)
  bad = {**_tree(), "dense": _tree()["dense"].at[0, 0].set(jnp.inf)}
  u, _ = tx.update(bad, tx.init(bad))
  assert not np.isfinite(np.asarray(u["dense"])).all()
  assert np.isfinite(np.asarray(u["conv"])).all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_leaves_keep_their_dtype(name, dtype):
  g = jax.tree.map(lambda x: x.astype(dtype), _tree(4))
  tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm=name)
  u, _ = tx.update(g, tx.init(g))
  want, _ = tx.update(jax.tree.map(lambda x: x.astype(jnp.float32), g),
                      tx.init(g))
  for k in SHAPES:
    assert u[k].dtype == dtype
    np.testing.assert_allclose(np.asarray(u[k], np.float32),
                               np.asarray(want[k]), rtol=2e-2, atol=2e-2)


def test_norm_per_leaf_and_bad_specs_are_named():
  g = {**_tree(5), "bias": jnp.ones(3)}
  names = {"dense": "spectral", "tall": "row", "conv": "col", "bias": "rms"}
  tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm=names, exact_svd=True)
  u, _ = tx.update(g, tx.init(g))
  for k, name in names.items():
    want, _ = reference.lmo_direction(name, np.asarray(g[k]))
    np.testing.assert_allclose(np.asarray(u[k]), want, rtol=2e-5, atol=2e-6)
  same = {k: "layer" for k in g}
  with pytest.raises(ValueError, match="block 'layer' groups 4 leaves"):
    tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm="spectral", blocks=same)
    tx.update(g, tx.init(g))
  with pytest.raises(ValueError, match="block 'layer' mixes norms"):
    tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm=names, blocks=same)
    tx.update(g, tx.init(g))
  with pytest.raises(ValueError, match="unknown norm 'nuclear'"):
    tx = normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm="nuclear")
    tx.update(g, tx.init(g))
  with pytest.raises(ValueError, match=r"leaf \['bias'\]: a leaf of shape \(3,\) "
                     "has no default matrix view"):
    tx = normopt.normalize_per_block(norm="spectral")
    tx.update(g, tx.init(g))
  with pytest.raises(ValueError, match="ns_steps"):
    normopt.normalize_per_block(
      weight_dimension_numbers=dims_of, norm="spectral", ns_steps=0)


def test_l2_default_is_unchanged_by_the_norm_argument():
  g = _tree(6)
  plain, named = normopt.normalize_per_block(), normopt.normalize_per_block(
      norm="l2")
  a, _ = plain.update(g, plain.init(g))
  b, _ = named.update(g, named.init(g))
  for k in SHAPES:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


_MUON_SHAPES = {"conv": (3, 3, 2, 4), "dense": (8, 3), "wide": (3, 8)}


def _quadratic(seed=0, shapes=None):
  """A stochastic least-squares problem per leaf: the gradient at step t is
  S * (W - C) + N_t, the same formula on both sides."""
  rng = np.random.default_rng(seed)
  shapes = shapes or _MUON_SHAPES
  keys = sorted(shapes)
  s = [np.abs(rng.standard_normal(shapes[k])) + 0.5 for k in keys]
  c = [rng.standard_normal(shapes[k]) for k in keys]
  noise = [[0.3 * rng.standard_normal(shapes[k]) for k in keys]
           for _ in range(100)]
  w0 = [0.1 * rng.standard_normal(shapes[k]) for k in keys]

  def grad(w, t):
    return [si * (wi - ci) + ni for si, wi, ci, ni in zip(s, w, c, noise[t])]
  return keys, w0, grad


def _train_x64(tx, keys, w0, grad, steps=100):
  """``steps`` jitted steps of ``tx`` in float64 on :func:`_quadratic`'s
  problem; the params as a dict of NumPy arrays."""
  with jax.enable_x64(True):
    params = {k: jnp.asarray(w) for k, w in zip(keys, w0)}
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
      u, state = tx.update(g, state, params)
      return optax.apply_updates(params, u), state

    for t in range(steps):
      g = grad([np.asarray(params[k]) for k in keys], t)
      params, state = step(params, state, dict(zip(keys, map(jnp.asarray, g))))
    return {k: np.asarray(v) for k, v in params.items()}


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_jordan_et_al_reference(nesterov):
  keys, w0, grad = _quadratic()
  with jax.enable_x64(True):
    tx = normopt.muon(0.02, beta=0.95, nesterov=nesterov, weight_decay=0.1,
                      weight_dimension_numbers=muon_dims_of)
    params = _train_x64(tx, keys, w0, grad)
    want = reference.muon(grad, w0, 100, 0.02, 0.95, 0.1, nesterov=nesterov)
  for k, w in zip(keys, want):
    np.testing.assert_allclose(params[k], w, rtol=1e-6, atol=1e-10,
                               err_msg=k)


@pytest.mark.parametrize("setting", ["auto", "mixed"])
def test_scion_matches_pethick_et_al_reference(setting):
  """100 steps against the float64 reference written from the Scion code:
  the default norms (spectral, SpectralConv, BiasRMS) constrained; and a
  norm per layer (sign, col, row) with per-layer radii, unconstrained."""
  # the Muon problem plus a bias and an embedding-like matrix
  keys, w0, grad = _quadratic(3, _MUON_SHAPES | {"bias": (4,), "emb": (5, 6)})
  if setting == "auto":
    norms = {"bias": "rms", "conv": "spectral", "dense": "spectral",
             "emb": "spectral", "wide": "spectral"}
    radius, radii, unconstrained, kwargs = 1.0, [1.0] * 5, False, {}
  else:
    norms = {"bias": "rms", "conv": "spectral", "dense": "sign",
             "emb": "row", "wide": "col"}
    radius = {"bias": 2.0, "conv": 3.0, "dense": 50.0, "emb": 4.0,
              "wide": 5.0}
    radii, unconstrained = [radius[k] for k in keys], True
    kwargs = {"norms": norms, "radius": radius, "unconstrained": True}
  with jax.enable_x64(True):
    scion = normopt.scion(0.01, beta=0.9, weight_dimension_numbers={
        k: CONV if k == "conv" else None if k == "bias" else MDN()
        for k in keys}, **kwargs)
    params = _train_x64(scion, keys, w0,
                        grad)
    want = reference.scion(grad, w0, 100, 0.01, 0.9,
                           [norms[k] for k in keys], radii, unconstrained)
  for k, w in zip(keys, want):
    np.testing.assert_allclose(params[k], w, rtol=1e-6, atol=1e-10,
                               err_msg=k)


def test_scion_rejects_bad_norms_and_radii():
  params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
  grads = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  with pytest.raises(ValueError, match="unknown norm"):
    tx = normopt.scion(0.1, norms={"w": "frobenius", "b": "rms"})
    tx.update(grads, tx.init(params), params)
  with pytest.raises(ValueError, match="radius"):
    tx = normopt.scion(0.1, radius=-1.0)
    tx.update(grads, tx.init(params), params)
  with pytest.raises(ValueError, match="beta"):
    normopt.scion(0.1, beta=1.0)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_bias_correction_switch_equals_optax_contrib_muon(nesterov):
  """With bias_correction=True and optax's eps, normopt.muon takes
  optax.contrib.muon's steps on matrices (float32, rtol 1e-5); without it
  (the reference's momentum) early Nesterov steps differ."""
  rng = np.random.default_rng(11)
  params = {"a": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal((3, 7)), jnp.float32)}
  mine = normopt.muon(0.02, beta=0.95, nesterov=nesterov, eps=1e-8,
                      bias_correction=True)
  theirs = optax.contrib.muon(0.02, beta=0.95, nesterov=nesterov)
  plain = normopt.muon(0.02, beta=0.95, nesterov=nesterov)
  states = [tx.init(params) for tx in (mine, theirs, plain)]
  first_gap = None
  for t in range(20):
    g = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape),
                                           jnp.float32), params)
    (u1, states[0]), (u2, states[1]), (u3, states[2]) = [
        tx.update(g, s, params) for tx, s in zip((mine, theirs, plain),
                                                  states)]
    for k in params:
      np.testing.assert_allclose(np.asarray(u1[k]), np.asarray(u2[k]),
                                 rtol=1e-5, atol=1e-7, err_msg=f"{k} {t}")
    if t == 1:
      first_gap = max(float(jnp.max(jnp.abs(u3[k] - u2[k]))) for k in params)
  # With Nesterov the reference's momentum weighs g and m differently at
  # step 2; without it the correction is one scalar, which NS removes.
  assert (first_gap > 1e-4) == nesterov


def test_muon_sends_vectors_to_the_other_transformation():
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  grads = {"w": jnp.arange(12.0).reshape(4, 3), "b": jnp.arange(3.0)}
  tx = normopt.muon(0.1, other=optax.sgd(0.5))
  u, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(u["b"]), -0.5 * np.arange(3.0))
  mask = {"w": False, "b": False}
  u, _ = normopt.muon(0.1, mask=mask, other=optax.sgd(1.0)).update(
      grads, normopt.muon(0.1, mask=mask, other=optax.sgd(1.0)).init(params),
      params)
  np.testing.assert_allclose(np.asarray(u["w"]), -np.asarray(grads["w"]))


def test_signum_equals_optax_signum():
  rng = np.random.default_rng(7)
  params = {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(3), jnp.float32)}
  mine, theirs = normopt.signum(0.01, beta=0.9), optax.signum(0.01, beta=0.9)
  s1, s2 = mine.init(params), theirs.init(params)
  for _ in range(20):
    g = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape),
                                           jnp.float32), params)
    u1, s1 = mine.update(g, s1, params)
    u2, s2 = theirs.update(g, s2, params)
    for k in params:
      np.testing.assert_allclose(np.asarray(u1[k]), np.asarray(u2[k]),
                                 rtol=1e-6)


def test_muon_in_nnx_optimizer_with_conv_and_dense():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
      self.norm = nnx.LayerNorm(4, rngs=rngs)
      self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.out(self.norm(self.conv(x)).mean(axis=(1, 2)))

  model = Net(nnx.Rngs(0))
  dims = normopt.flax_weight_dimension_numbers(model)
  optimizer = nnx.Optimizer(
      model, normopt.muon(0.02, weight_dimension_numbers=dims), wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 6, 6, 1)),
                  jnp.float32)
  y = jnp.arange(8) % 2

  @nnx.jit
  def step(model, optimizer):
    def loss(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value

  kernel = np.asarray(model.conv.kernel[...]).copy()
  losses = [float(step(model, optimizer)) for _ in range(30)]
  assert losses[-1] < 0.9 * losses[0], losses
  assert not np.allclose(np.asarray(model.conv.kernel[...]), kernel)
