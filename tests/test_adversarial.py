"""The adversarial matrix: every method x dtype x hostile input.

The expected behaviour of each input kind is the README's table
("Adversarial inputs"); ``EXPECTED`` below is that table, and each cell of
the matrix is one test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import registry

NAMES = sorted(registry.ALIASES)
DTYPES = ["float32", "bfloat16", "float16"]
# Methods whose step is invariant to the gradient's scale.
SCALE_FREE = {"sngm", "sngd", "block_sngm", "normalized_sgdm", "nigt", "lars",
              "clars", "signum", "muon", "normuon", "scion"}
# Muon's bias goes through Adam: only its matrix "w" is scale-free. (LARS
# and CLARS trust-ratio every leaf by default, the bias included.)
MATRIX_ONLY = ("muon", "normuon")

# Every momentum on raw gradients (Muon, NorMuon, Scion, Signum, LAMB's
# moments) is kept in float32, so no float16 or bfloat16 cell loses its
# step: scale-freedom is checked in every dtype.
_SCALE_CASES = [(n, d) for n in sorted(SCALE_FREE) for d in DTYPES]

EXPECTED = {
    "zero_grad": "finite; the step is exactly zero",
    "zero_params": "finite; LARS/CLARS scale as if ‖w‖ = 1",
    "tiny": "finite; scale-free methods give the unit-scale step",
    "huge": "finite; scale-free methods give the unit-scale step (a plain "
            "momentum step lr*g may exceed float16's range)",
    "denormal": "finite; f16: as tiny; f32/bf16 subnormals are read as zero "
                "by XLA (flush-to-zero), so the step is zero",
    "one_inf": "non-finite step (propagated); apply_if_finite skips it",
    "one_nan": "non-finite step (propagated); apply_if_finite skips it",
    "empty": "empty updates, no error",
    "none_leaves": "None leaves stay None; the rest as usual",
    "int_leaf": "TypeError naming the leaf by its path and its dtype",
    "float0_leaf": "TypeError naming the leaf and its dtype",
    "masked_subtree": "optax.masked: masked-out leaves pass through unchanged",
}
INPUTS = list(EXPECTED)

# Gradient scales that stress each dtype: "huge" squares overflow the dtype
# itself, "tiny" squares underflow it, "denormal" values are subnormal.
SCALES = {
    "float32": {"tiny": 1e-30, "huge": 1e30, "denormal": 1e-40},
    "bfloat16": {"tiny": 1e-30, "huge": 1e30, "denormal": 1e-40},
    "float16": {"tiny": 1e-4, "huge": 3e4, "denormal": 3e-6},
}


def _tree(dtype, seed):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.uniform(0.5, 1.0, (4, 3)) * rng.choice(
              [-1, 1], (4, 3)), dtype),
          "b": jnp.asarray(rng.uniform(0.5, 1.0, (3,)), dtype)}


def _step(name, params, grads, tx=None):
  tx = tx or registry.make(name)
  state = tx.init(params)
  extra = registry.extra_args(name, grads, params)
  return tx.update(grads, state, params, **extra), state


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
             for x in jax.tree.leaves(tree))


def _assert_dtypes(updates, params):
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    assert u.dtype == p.dtype and u.shape == p.shape


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_adversarial_cell(name, dtype, kind):
  params, grads = _tree(dtype, 0), _tree(dtype, 1)

  if kind in ("zero_grad", "zero_params"):
    if kind == "zero_grad":
      grads = jax.tree.map(jnp.zeros_like, grads)
    else:
      params = jax.tree.map(jnp.zeros_like, params)
    (updates, new_state), _ = _step(name, params, grads)
    assert _finite(updates) and _finite(new_state)
    _assert_dtypes(updates, params)
    if kind == "zero_grad":
      assert all(not jnp.any(u) for u in jax.tree.leaves(updates))
    else:
      assert any(jnp.any(u) for u in jax.tree.leaves(updates))

  elif kind in ("tiny", "huge", "denormal"):
    scale = SCALES[dtype][kind]
    # Scaled in NumPy: XLA would flush subnormal results to zero.
    scaled = jax.tree.map(lambda g: jnp.asarray(
        (np.asarray(g, np.float32) * scale).astype(g.dtype)), grads)
    assert all(np.all(np.asarray(s, np.float32) != 0)
               for s in jax.tree.leaves(scaled)), "input not representable"
    (updates, new_state), _ = _step(name, params, scaled)
    # Muon's bias takes an Adam step (not scale-free at 1e-30): only its w
    # is checked against the unit-scale step.
    keys = "w" if name in MATRIX_ONLY else "wb"
    assert _finite({k: updates[k] for k in keys})
    _assert_dtypes(updates, params)
    if kind == "denormal" and dtype != "float16":
      assert all(not jnp.any(u) for u in jax.tree.leaves(updates))
    elif (name, dtype) in _SCALE_CASES:
      _assert_unit_scale_step(name, dtype, params, scaled, scale, updates, keys)

  elif kind in ("one_inf", "one_nan"):
    bad = jnp.inf if kind == "one_inf" else jnp.nan
    grads = {**grads, "w": grads["w"].at[1, 2].set(bad)}
    (updates, _), _ = _step(name, params, grads)
    assert not _finite(updates), "a non-finite gradient must not be hidden"
    _assert_dtypes(updates, params)
    # Wrapped: the step is skipped, the inner state kept.
    safe = optax.apply_if_finite(registry.make(name), max_consecutive_errors=3)
    (updates, new_state), state = _step(name, params, grads, tx=safe)
    assert all(not jnp.any(u) for u in jax.tree.leaves(updates))
    assert int(new_state.notfinite_count) == 1
    jax.tree.map(np.testing.assert_array_equal, new_state.inner_state,
                 state.inner_state)

  elif kind == "empty":
    (updates, _), _ = _step(name, {}, {})
    assert updates == {}

  elif kind == "none_leaves":
    params = {**params, "frozen": None}
    grads = {**grads, "frozen": None}
    (updates, _), _ = _step(name, params, grads)
    assert updates["frozen"] is None
    (want, _), _ = _step(name, {k: params[k] for k in "wb"},
                         {k: grads[k] for k in "wb"})
    for k in "wb":
      np.testing.assert_array_equal(np.asarray(updates[k], np.float32),
                                    np.asarray(want[k], np.float32))

  elif kind in ("int_leaf", "float0_leaf"):
    params = {**params, "steps": jnp.arange(3, dtype=jnp.int32)}
    if kind == "int_leaf":
      grads = {**grads, "steps": jnp.ones(3, jnp.int32)}
    else:
      grads = jax.grad(lambda p: sum(jnp.sum(p[k].astype(jnp.float32))
                                     for k in "wb"), allow_int=True)(params)
    tx = registry.make(name)
    extra = _extra_for(name, grads, params)
    with pytest.raises(TypeError, match=r"leaf \['steps'\] has dtype"):
      tx.update(grads, tx.init(params), params, **extra)

  else:  # masked_subtree: the documented way to carry integer leaves
    params = {**params, "steps": jnp.arange(3, dtype=jnp.int32)}
    grads = {**grads, "steps": jnp.ones(3, jnp.int32)}
    mask = {"w": True, "b": True, "steps": False}
    tx = optax.masked(registry.make(name), mask)
    state = tx.init(params)
    inner = {k: grads[k] for k in "wb"}
    # Extra arguments arrive whole, like the params; masked drops the same
    # entries from them.
    updates, _ = tx.update(grads, state, params,
                           **_extra_for(name, grads, params))
    np.testing.assert_array_equal(updates["steps"], grads["steps"])
    (want, _), _ = _step(name, {k: params[k] for k in "wb"}, inner)
    for k in "wb":
      np.testing.assert_array_equal(np.asarray(updates[k], np.float32),
                                    np.asarray(want[k], np.float32))


def _assert_unit_scale_step(name, dtype, params, held, scale, updates, keys):
  """``updates`` equal the float32 step for the gradient the dtype actually
  held (same rounding as the scaled input), rescaled by ``1/scale`` in
  float64."""
  reference = jax.tree.map(lambda s: jnp.asarray(
      np.asarray(s, np.float64) / scale, jnp.float32), held)
  (want, _), _ = _step(name, jax.tree.map(
      lambda p: p.astype(jnp.float32), params), reference)
  rtol = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}[dtype]
  for k in keys:
    np.testing.assert_allclose(np.asarray(updates[k], np.float32),
                               np.asarray(want[k]), rtol=rtol, atol=1e-6)


def _extra_for(name, grads, params):
  """Extra arguments shaped like the whole params (integer leaf included)."""
  floats = {k: grads[k] for k in "wb"}
  extra = registry.extra_args(name, floats, params)
  if name == "adaptive_nigt":
    extra = {"second_grads": {**extra["second_grads"],
                              "steps": grads["steps"]}}
  if name == "clars":
    extra = {"per_example_norms": {**extra["per_example_norms"],
                                   "steps": jnp.zeros(())}}
  return extra


HOW = ("argument", "constant", "computed")


def _scaled_step(name, params, base, scale, how):
  """One jitted update whose gradient ``base * scale`` reaches XLA as a jit
  argument, as a closed-over constant, or computed inside the jit."""
  tx = registry.make(name)
  state = tx.init(params)

  def scale_fn(g):
    return jax.tree.map(
        lambda x: (x.astype(jnp.float32) * scale).astype(x.dtype), g)

  def update(grads, state, params):
    extra = registry.extra_args(name, grads, params)
    return tx.update(grads, state, params, **extra)[0]

  held = jax.jit(scale_fn)(base)
  if how == "argument":
    out = jax.jit(update)(held, state, params)
  elif how == "constant":
    out = jax.jit(lambda s, p: update(held, s, p))(state, params)
  else:
    out = jax.jit(lambda g, s, p: update(scale_fn(g), s, p))(base, state,
                                                             params)
  return out, held


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["tiny", "huge"])
@pytest.mark.parametrize("name,dtype", _SCALE_CASES)
def test_scale_free_whatever_the_compiler_sees(name, dtype, kind, how):
  """1e±30 (float16: 1e-4 and squares beyond its range) gives the unit-scale
  step whether the gradient is a jit argument, a constant XLA can fold, or
  computed inside the jit: the rescue must not rest on the simplifier."""
  params, base = _tree(dtype, 0), _tree(dtype, 1)
  scale = SCALES[dtype][kind]
  updates, held = _scaled_step(name, params, base, scale, how)
  keys = "w" if name in MATRIX_ONLY else "wb"
  _assert_dtypes(updates, params)
  _assert_unit_scale_step(name, dtype, params, held, scale, updates, keys)


def test_matrix_size():
  """The numerics guide reports this count."""
  assert len(NAMES) * len(DTYPES) * len(INPUTS) == 576
