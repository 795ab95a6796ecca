"""Zero-safe, overflow-safe norms accumulated in float32 or wider.

Every ℓ2 block norm in normopt goes through :func:`block_norms` (the ℓ1
norms of ``normalize_per_block(norm="sign")``, which cannot overflow or
underflow before their entries do, are plain sums: :func:`l1_norms`):

* the squared norm of each leaf is accumulated in ``promote(leaf.dtype, f32)``
  (float32 for bf16/f16/f32 leaves, float64 for f64 leaves under x64);
* the fast sum of squares is used unless it overflows to ``inf`` or is so
  small that squares flushed to zero (subnormals) could change it by more
  than a rounding error (below ``n * tiny / eps`` for ``n`` terms, about
  ``1e-31 n`` in float32). Only then a ``lax.cond`` (one per 8 blocks) takes
  the rescue branch, which computes in one pass three sums of squares of
  each block, of ``x``, of ``x 2^-k`` and of ``x 2^k`` (``k`` = 100 in
  float32, 800 in float64; multiplying by a power of two is exact), and
  picks the one that neither overflowed nor underflowed. Gradients scaled
  by 1e30 or 1e-30 therefore give exact norms whether they are jit
  arguments, constants or computed inside jit (the scales sit behind
  ``jax.lax.optimization_barrier``, so XLA's simplifier cannot fold
  ``(x 2^k)²`` into ``x² 4^k``, which overflows; an earlier rescue that
  divided by the block maximum returned NaN for closed-over constants),
  and the common case pays for one pass over the data;
* the per-leaf and per-chunk work are small jitted functions, cached per
  shape and dtype: a tree of thousands of leaves of a few shapes is traced
  once per shape, and XLA on CPU compiles the identical kernels once. A
  chunk's squared norms go into its ``lax.cond`` as one vector, so the
  test, the square roots and the rescue's selection are one kernel per
  chunk rather than one per block (per block they made lars compile 1.5x
  slower than ``optax.lars``; see the compile-time section of
  benchmarks/README.md);
* a zero block has norm exactly zero and dividing by it is never done:
  :func:`divide_by_norm` divides by one instead.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Groups = Sequence[Sequence[int]]


def accumulation_dtype(dtype) -> jnp.dtype:
  """The dtype a norm of ``dtype`` values is accumulated in (f32 or wider)."""
  return jnp.promote_types(dtype, jnp.float32)


def leaf_paths(tree) -> list[str]:
  """Each leaf's path (``jax.tree_util.keystr``; an NNX ``Variable``'s
  trailing ``.value`` dropped), in ``jax.tree.leaves`` order."""
  out = []
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if path and getattr(path[-1], "name", None) == "value":
      path = path[:-1]
    out.append(jax.tree_util.keystr(path) or "<root>")
  return out


def check_float_leaves(tree, what: str = "updates") -> None:
  """Raises a ``TypeError`` naming (by its path) the first non-floating leaf
  of ``tree``."""
  for path, x in zip(leaf_paths(tree), jax.tree.leaves(tree)):
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
      raise TypeError(
          f"normopt needs floating-point {what}; leaf {path} has dtype "
          f"{jnp.asarray(x).dtype} (shape {jnp.shape(x)}). Mask integer "
          "leaves out with optax.masked or drop them from the tree.")


def _common_dtype(leaves) -> jnp.dtype:
  if not leaves:
    return jnp.dtype(jnp.float32)
  return jnp.result_type(*[accumulation_dtype(x.dtype) for x in leaves])


def norm_dtype(tree) -> jnp.dtype:
  """The dtype norms of ``tree`` come out in (and scalar states are kept in)."""
  return _common_dtype(jax.tree.leaves(tree))


def axpby(a, x, b, y):
  """``a*x + b*y`` leaf by leaf, computed in f32 or wider, cast to x's dtype.

  ``a`` and ``b`` are scalars; ``x`` and ``y`` trees of the same structure.
  """
  def one(xi, yi):
    dtype = accumulation_dtype(xi.dtype)
    return (jnp.asarray(a).astype(dtype) * xi.astype(dtype)
            + jnp.asarray(b).astype(dtype) * yi.astype(dtype)).astype(xi.dtype)
  return jax.tree.map(one, x, y)


def pow2_exponent(m: jax.Array) -> jax.Array:
  """The exponent ``e`` with ``m = f 2^e``, ``f`` in [0.5, 1), clamped so that
  ``2^e`` and ``2^-e`` are normal numbers of ``m``'s dtype (0 for ``m = 0``)."""
  info = jnp.finfo(m.dtype)
  _, e = jnp.frexp(m)
  return jnp.clip(e, info.minexp, info.maxexp - 2)


def pow2_rescale(x: jax.Array, e: jax.Array) -> jax.Array:
  """``x * 2^-e``, exact, behind an optimization barrier.

  Multiplying by a power of two only shifts exponents, so the rescaled
  values are exact. The barrier keeps XLA's algebraic simplifier from
  moving the scale across a later reduction (``sum((x s)²)`` rewritten as
  ``s² sum(x²)``, which overflows again): it has done so for closed-over
  constants, and a rescue that works only until the compiler reassociates
  it is not exact.
  """
  scale = jnp.ldexp(jnp.ones_like(e, x.dtype), -e)
  return jax.lax.optimization_barrier(x * scale)


def underflow_threshold(dtype, sizes):
  """Below this a sum of squares of ``sizes`` terms may have lost precision.

  A square below ``tiny`` is flushed to zero (XLA flushes subnormals), so
  ``n`` terms lose at most ``n * tiny``; relative to the sum that stays below
  the rounding error ``eps`` once the sum exceeds ``n * tiny / eps``. An
  all-zero block also lands below (the rescue then returns zero).
  """
  info = jnp.finfo(dtype)
  return sizes * (float(info.tiny) / float(info.eps))


def unreliable(sq: jax.Array, terms) -> jax.Array:
  """Whether a sum of squares of ``terms`` terms overflowed or fell below
  :func:`underflow_threshold` (and must be recomputed rescaled)."""
  return ~jnp.isfinite(sq) | (sq < underflow_threshold(sq.dtype, terms))


def _scale_exponent(dtype) -> int:
  """``k`` of the scaled sums: 100 for float32, 800 for float64.

  ``2^±k`` are normal numbers; the up-scaled sum of a block whose plain sum
  is below the underflow threshold stays finite, and the down-scaled sum of
  an overflowing block loses less than a rounding error to flushed squares,
  for blocks of up to 2^30 elements.
  """
  return jnp.finfo(dtype).maxexp * 25 // 32


@functools.partial(jax.jit, static_argnames="dtype")
def _scaled_square_sums(x: jax.Array, dtype) -> jax.Array:
  """``[Σx², Σ(x 2^-k)², Σ(x 2^k)²]`` of one leaf in ``dtype``, one pass."""
  k = _scale_exponent(dtype)
  # The barrier hides the scales' values from XLA's simplifier, which would
  # otherwise fold (x 2^k)² into x² 4^k = x² inf (0 * inf = NaN for a zero).
  scales = jax.lax.optimization_barrier(
      jnp.asarray([1.0, 2.0 ** -k, 2.0 ** k], dtype))
  scaled = x.astype(dtype)[None] * scales.reshape((3,) + (1,) * x.ndim)
  return jnp.sum(jnp.square(scaled), axis=tuple(range(1, x.ndim + 1)))


def _norms_from_sums(sums: jax.Array, sizes: jax.Array) -> jax.Array:
  """The norms of blocks from their three sums, ``sums[:, j]`` for block
  ``j`` of ``sizes[j]`` elements (see the module docstring)."""
  k = _scale_exponent(sums.dtype)
  plain = sums[0]
  finite = jnp.isfinite(plain)
  under = plain < underflow_threshold(sums.dtype, sizes)
  chosen = jnp.where(finite, jnp.where(under, sums[2], plain), sums[1])
  factor = jnp.where(finite, jnp.where(under, 2.0 ** -k, 1.0), 2.0 ** k)
  return jnp.sqrt(chosen) * factor.astype(sums.dtype)


@functools.partial(jax.jit, static_argnames="dtype")
def _square_sum(x: jax.Array, dtype) -> jax.Array:
  """``Σx²`` of one leaf, accumulated in ``dtype``."""
  return jnp.sum(jnp.square(x.astype(dtype)))


@functools.partial(jax.jit, static_argnames=("sizes", "axis_name"))
def _checked_norms(sq: jax.Array, blocks: tuple, sizes: tuple, axis_name
                   ) -> jax.Array:
  """``sqrt(sq)``, the norms of a chunk of blocks from their squared norms,
  or, where any of them overflowed or may have underflowed (one
  ``lax.cond``), the norms from the three scaled sums of each block's
  leaves. In and out as one vector: the selection and the square roots are
  one kernel per chunk rather than one per block."""
  dtype = sq.dtype
  terms = jnp.asarray(sizes, dtype)

  def rescue():
    sums = jnp.stack([
        _scaled_square_sums(block[0] if len(block) == 1 else jnp.concatenate(
            [jnp.ravel(x).astype(dtype) for x in block]), dtype)
        for block in blocks], axis=1)
    if axis_name is not None:
      sums = jax.lax.psum(sums, axis_name)
    return _norms_from_sums(sums, terms)

  return jax.lax.cond(jnp.any(unreliable(sq, terms)), rescue,
                      lambda: jnp.sqrt(sq))


# Blocks checked by one lax.cond. One cond per block cost about 4 ms of XLA
# CPU compile each; 8 blocks per cond compiled 1.6x faster at 1000 leaves,
# and chunks of 16 or 32 gained nothing (while repeating less often, so
# fewer of their kernels are identical).
_CHUNK = 8


def block_norms(leaves, groups: Groups, axis_name=None) -> list[jax.Array]:
  """L2 norm of each group of leaves, exact at any magnitude.

  Args:
    leaves: a list of arrays (any floating dtypes).
    groups: for each block, the indices of the leaves that form it.
    axis_name: if given, the squared norms are summed over this mapped axis
      (the leaves are shards of one logical tree).

  Returns:
    A list with one scalar norm per group, in the widest accumulation dtype
    of the leaves (float32 unless x64 leaves are present).
  """
  dtype = jnp.dtype(_common_dtype(leaves))
  if not leaves:
    return [jnp.zeros((), dtype) for _ in groups]
  sq = [functools.reduce(jnp.add, [_square_sum(leaves[i], dtype) for i in g])
        for g in groups]
  sizes = [sum(leaves[i].size for i in g) for g in groups]
  if axis_name is not None:
    sq = jax.lax.psum(sq, axis_name)
    sizes = [size * jax.lax.axis_size(axis_name) for size in sizes]
  norms = []
  for start in range(0, len(groups), _CHUNK):
    chunk = slice(start, start + _CHUNK)
    checked = _checked_norms(
        jnp.stack(sq[chunk]),
        tuple([leaves[i] for i in g] for g in groups[chunk]),
        tuple(sizes[chunk]), axis_name)
    norms += [checked[j] for j in range(checked.shape[0])]
  return norms


def l1_norms(leaves, groups: Groups, axis_name=None) -> list[jax.Array]:
  """The ℓ1 norm (sum of absolute values) of each group of leaves, one fast
  sum each in the accumulation dtype.

  Unlike squares, absolute values neither overflow nor underflow before the
  data do: the float32 sum is exact to rounding for any block whose entries
  are normal numbers and whose norm is below float32's maximum (gradients
  at 1e±30 included). Outside that, the sum is what the direction sees
  too: a subnormal entry, flushed to zero by XLA, has sign 0, and a norm
  beyond the maximum is ``inf`` in the float32 state. So no rescue (and no
  ``lax.cond`` to compile) is needed.
  """
  dtype = jnp.dtype(_common_dtype(leaves)) if leaves else jnp.float32
  sums = [sum((jnp.sum(jnp.abs(leaves[i].astype(dtype))) for i in g),
              jnp.zeros((), dtype)) for g in groups]
  if axis_name is not None and sums:
    sums = list(jax.lax.psum(sums, axis_name))
  return sums


def global_norm(leaves, axis_name=None) -> jax.Array:
  """The L2 norm of all ``leaves`` together (see :func:`block_norms`)."""
  return block_norms(leaves, [list(range(len(leaves)))], axis_name)[0]


def divide_by_norm(x: jax.Array, norm: jax.Array) -> jax.Array:
  """``x / norm`` computed in the accumulation dtype and cast back to x's.

  A zero ``norm`` divides by one instead, so a zero block stays zero and no
  NaN is made; a NaN ``norm`` (from a NaN in ``x``) is propagated by ``x``.
  """
  dtype = jnp.promote_types(accumulation_dtype(x.dtype), norm.dtype)
  safe = jnp.where(norm > 0, norm, 1).astype(dtype)
  return (x.astype(dtype) / safe).astype(x.dtype)


def example_sum_sq(x: jax.Array) -> jax.Array:
  """The sum of squares of each example (axis 0) of ``x``."""
  return jnp.sum(jnp.square(x), tuple(range(1, x.ndim)))


def example_norms(sq_fn, *arrays) -> jax.Array:
  """Per-example norms ``sqrt(sq_fn(*arrays))``, exact at any magnitude.

  ``arrays`` have a leading example axis; ``sq_fn`` returns one squared norm
  per example and must be homogeneous of degree 2 in each array (a sum of
  squares, or a product of such sums as in ``||a||^2 ||d||^2``). The fast
  value is used unless some example's overflows or is small enough that
  flushed subnormal terms could matter; then (``lax.cond``) those examples
  are recomputed with each array divided by its per-example largest
  magnitude.
  """
  sq = sq_fn(*arrays)
  terms = sum(x.size // x.shape[0] for x in arrays)
  bad = unreliable(sq, terms)

  def rescue(_):
    cast = [x.astype(sq.dtype) for x in arrays]
    exps = [pow2_exponent(jnp.max(jnp.abs(x), axis=tuple(range(1, x.ndim)),
                                  initial=0)) for x in cast]
    scaled = sq_fn(*[pow2_rescale(x, e.reshape((-1,) + (1,) * (x.ndim - 1)))
                     for x, e in zip(cast, exps)])
    return jnp.where(bad, jnp.ldexp(jnp.sqrt(scaled), sum(exps)), jnp.sqrt(sq))

  return jax.lax.cond(jnp.any(bad), rescue, lambda _: jnp.sqrt(sq), None)


def hypot(norms: Sequence[jax.Array]) -> jax.Array:
  """``sqrt(sum of n**2)`` over a list of equally shaped norms, without
  overflow or underflow (each is rescaled by the power of two of their
  largest first)."""
  top = functools.reduce(jnp.maximum, norms)
  finite = jnp.isfinite(top)
  e = pow2_exponent(jnp.where(finite, top, 0))
  total = sum(jnp.square(pow2_rescale(n, e)) for n in norms)
  return jnp.where(finite, jnp.ldexp(jnp.sqrt(total), e), top)
