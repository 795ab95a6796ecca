"""Norms: exact at any magnitude, zero-safe, accumulated in f32 or wider."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normopt._src import numerics
from tests import reference


@pytest.mark.parametrize("scale", [1.0, 1e30, 1e-30, 1e-25, 1e36])
def test_global_norm_exact_at_any_scale(scale):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(1000)
  leaves = [jnp.asarray(x[:600] * scale, jnp.float32),
            jnp.asarray(x[600:] * scale, jnp.float32)]
  stored = np.concatenate([np.asarray(v, np.float64) for v in leaves])
  expected = np.sqrt(np.sum(np.square(stored / np.abs(stored).max()))) * np.abs(
      stored).max()
  got = float(jax.jit(numerics.global_norm)(leaves))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_denormals_are_flushed_not_nan():
  # XLA on CPU/GPU flushes float32 denormals to zero: such a tree has norm 0
  # (or its exact norm where denormals are kept), never NaN.
  x = jnp.full((10,), 1e-40, jnp.float32)
  got = float(numerics.global_norm([x]))
  assert got == 0.0 or got == pytest.approx(np.sqrt(10) * 1e-40, rel=1e-3)


def test_float16_squares_that_overflow_still_exact():
  x = jnp.full((64,), 60000.0, jnp.float16)  # x**2 overflows float16
  got = float(numerics.global_norm([x]))
  np.testing.assert_allclose(got, 60000.0 * 8.0, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_accumulates_in_float32(dtype):
  x = jnp.ones((4096,), dtype) * 0.1
  norm = numerics.block_norms([x], [[0]])
  assert norm[0].dtype == jnp.float32
  np.testing.assert_allclose(float(norm[0]), np.sqrt(4096) * float(x[0]),
                             rtol=1e-6)


def test_float64_under_x64():
  with jax.enable_x64(True):
    x = jnp.asarray(np.arange(5.0))
    norm = numerics.global_norm([x])
    assert norm.dtype == jnp.float64
    assert float(norm) == pytest.approx(np.sqrt(30.0), rel=1e-15)


def test_zero_and_empty():
  assert float(numerics.global_norm([jnp.zeros(3)])) == 0.0
  assert float(numerics.global_norm([])) == 0.0
  assert [float(n) for n in numerics.block_norms([jnp.zeros((0,))], [[0]])
          ] == [0.0]
  assert numerics.block_norms([jnp.ones(3)], []) == []
  out = numerics.divide_by_norm(jnp.zeros(3), jnp.asarray(0.0))
  assert not np.isnan(np.asarray(out)).any()


def test_block_norms_groups_and_mixed_rescue():
  # One block needs rescue (huge), the other not: each stays exact.
  a = jnp.full((4,), 1e30, jnp.float32)
  b = jnp.full((9,), 2.0, jnp.float32)
  norms = numerics.block_norms([a, b, b], [[0], [1, 2]])
  np.testing.assert_allclose(np.asarray(norms), [2e30, np.sqrt(72.0)],
                             rtol=1e-6)


def _exact_block_norms(leaves, groups):
  return np.asarray([reference.norm([leaves[i] for i in g]) for g in groups])


@pytest.mark.parametrize("how", ["argument", "closed_over", "computed_inside"])
def test_many_blocks_mixed_magnitudes_three_ways(how):
  # 21 blocks (several lax.cond chunks), some of two leaves, magnitudes
  # from 1e-36 to 1e37 and zero side by side: every block exact, whether
  # XLA sees the leaves as arguments, as constants or as computed values.
  rng = np.random.default_rng(1)
  scales = [1.0, 1e30, 1e-30, 0.0, 1e37, 1e-36, 1e-25, 3e19]
  base = [rng.standard_normal((5, 3)) for _ in range(24)]
  factors = np.asarray([scales[i % len(scales)] for i in range(24)], np.float32)
  leaves = [jnp.asarray(b * f, jnp.float32) for b, f in zip(base, factors)]
  groups = [[i] for i in range(18)] + [[18, 19], [20, 21], [22, 23]]
  expected = _exact_block_norms(leaves, groups)
  if how == "argument":
    got = jax.jit(lambda xs: numerics.block_norms(xs, groups))(leaves)
  elif how == "closed_over":
    got = jax.jit(lambda: numerics.block_norms(leaves, groups))()
  else:
    unit = [jnp.asarray(b, jnp.float32) for b in base]
    got = jax.jit(lambda xs, f: numerics.block_norms(
        [x * f[i] for i, x in enumerate(xs)], groups))(unit, factors)
    expected = _exact_block_norms(
        [np.float32(u) * f for u, f in zip(np.asarray(unit), factors)], groups)
  np.testing.assert_allclose(np.asarray(got, np.float64), expected,
                             rtol=1e-5, atol=0)


def test_float64_extremes_under_x64():
  with jax.enable_x64(True):
    x = np.asarray([3.0, 4.0])
    for scale in (1e300, 1e-300, 1.0):
      norm = jax.jit(numerics.global_norm)([jnp.asarray(x * scale)])
      assert float(norm) == pytest.approx(5.0 * scale, rel=1e-14)


def test_nan_propagates():
  assert np.isnan(float(numerics.global_norm([jnp.array([1.0, jnp.nan])])))


def test_non_float_leaves_rejected():
  with pytest.raises(TypeError, match=r"leaf \[1\] has dtype int32"):
    numerics.check_float_leaves([jnp.zeros(2), jnp.zeros(2, jnp.int32)])


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20),
       st.integers(-35, 35))
def test_norm_matches_float64_reference(values, exponent):
  x = np.asarray(values, np.float64) * 10.0 ** exponent
  x32 = np.asarray(x, np.float32)
  expected = np.linalg.norm(x32.astype(np.float64))
  got = float(numerics.global_norm([jnp.asarray(x32)]))
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-45)
