"""Unit-norm steepest directions (linear minimization oracles) of one block.

For a block ``d`` and a norm ``‖·‖`` the direction is
``argmax_{‖Δ‖ ≤ 1} <d, Δ>`` (the negative of the LMO of the Scion paper), and
``<d, direction> = ‖d‖_*``, the dual norm, is kept as the diagnostic:

======== ===================================== ============================
norm     direction                             dual norm ``‖d‖_*``
======== ===================================== ============================
l2       ``d / ‖d‖₂``                          ``‖d‖₂``
rms      ``d / rms(d) = √n d / ‖d‖₂``          ``√n ‖d‖₂``
sign     ``sign(d)`` (the ℓ∞ ball)             ``‖d‖₁``
col      each column of the matrix over its    ``Σ_j ‖d[:, j]‖₂``
         own ℓ2 norm
row      each row of the matrix over its own   ``Σ_i ‖d[i, :]‖₂``
         ℓ2 norm
spectral ``U Vᵀ`` for ``d = U S Vᵀ`` (Newton-   the nuclear norm ``Σ σ``
         Schulz, or an exact SVD)              (``<d, U Vᵀ>``)
======== ===================================== ============================

The *matrix view* of a leaf is given by optax's
:class:`optax.contrib.MuonDimensionNumbers` ``(reduction_axis, output_axis)``:
the reduction axes become the rows (``d_in``, as in ``y = x W``), the output
axes the columns (``d_out``), and every other axis is a batch axis, each of
its entries a separate matrix. A 2-D leaf defaults to ``(0, 1)``; a leaf of
three or more dimensions has no default (``(in, heads, head_dim)`` and
``(kh, kw, in, out)`` cannot be told apart by shape): see
:func:`normopt.flax_weight_dimension_numbers`. Every direction is computed in
float32 or wider and is exact at any scale: each matrix is first divided by
the power of two of its largest entry.
"""

from __future__ import annotations

import math
import types
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from optax.contrib import MuonDimensionNumbers

from normopt._src import numerics

NormName = Literal["l2", "spectral", "sign", "rms", "col", "row"]
NORMS = ("l2", "spectral", "sign", "rms", "col", "row")
MATRIX_NORMS = ("spectral", "col", "row")  # one leaf per block, matrix view
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")

# Newton-Schulz coefficient tables, one row (a, b, c) per iteration.
NS_PRESETS = types.MappingProxyType({
    # Jordan et al.'s quintic (the Muon reference; optax's default)
    "standard": ((3.4445, -4.7750, 2.0315),),
    # You's per-step set (optax's "dion" preset; microsoft/dion)
    "dion": ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377),
             (3.7418, -5.5913, 2.3037), (2.8769, -3.1427, 1.2046),
             (2.8366, -3.0525, 1.2012)),
    # Amsel et al., Polar Express (arXiv 2505.16932), Alg. 1: the optimal
    # odd quintics for [1e-3, 1], rows 1-7 as p(x / 1.01) (a safety margin
    # against round-off), the last row repeated for later steps.
    "polar_express": (*(
        (a / 1.01, b / 1.01 ** 3, c / 1.01 ** 5) for a, b, c in (
            (8.28721201814563, -23.595886519098837, 17.300387312530933),
            (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
            (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
            (3.3184196573706015, -2.488488024314874, 0.51004894012372),
            (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
            (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
            (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
        )), (1.875, -1.25, 0.375)),
})
NS_COEFFS = NS_PRESETS["standard"][0]
CoeffSpec = Union[str, Sequence[float], Sequence[Sequence[float]]]


def ns_table(coeffs: CoeffSpec) -> np.ndarray:
  """The ``(n, 3)`` table of a preset name, an ``(a, b, c)`` triple or a
  table; a ``ValueError`` naming ``ns_coeffs`` otherwise."""
  if isinstance(coeffs, str):
    if coeffs not in NS_PRESETS:
      raise ValueError(f"ns_coeffs: unknown preset {coeffs!r}; choose one of "
                       f"{', '.join(map(repr, NS_PRESETS))} or pass an "
                       "(a, b, c) triple or an (n, 3) table")
    coeffs = NS_PRESETS[coeffs]
  table = np.asarray(coeffs, np.float64)
  if table.ndim == 1:
    table = table[None]
  if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] == 0:
    raise ValueError(f"ns_coeffs must be (a, b, c) or an (n, 3) table, got "
                     f"shape {np.shape(coeffs)}")
  if not np.all(np.isfinite(table)):
    raise ValueError("ns_coeffs must be finite")
  return table


class MatrixAxes(NamedTuple):
  """A leaf's axes as (batch, reduction, output) tuples of non-negative ints."""
  batch: tuple[int, ...]
  reduction: tuple[int, ...]
  output: tuple[int, ...]


def _axes_tuple(axes, ndim: int) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
  if not axes:
    raise ValueError("dimension numbers need at least one reduction and one "
                     "output axis")
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(f"axis {a} is out of range for a leaf of {ndim} "
                       "dimensions")
  return tuple(int(a) % ndim for a in axes)


def matrix_axes(shape: Sequence[int],
                dims: MuonDimensionNumbers | None) -> MatrixAxes:
  """The (batch, reduction, output) axes of a leaf of ``shape`` under
  ``dims`` (default ``(0, 1)`` for a 2-D leaf; none for other ranks)."""
  ndim = len(shape)
  if dims is None:
    if ndim != 2:
      raise ValueError(
          f"a leaf of shape {tuple(shape)} has no default matrix view (only "
          "2-D leaves do): pass weight_dimension_numbers "
          "(optax.contrib.MuonDimensionNumbers; for a Flax NNX model "
          "normopt.flax_weight_dimension_numbers(model))")
    dims = MuonDimensionNumbers(0, 1)
  if ndim < 2:
    raise ValueError(f"a matrix norm needs a leaf with 2 or more dimensions, "
                     f"got shape {tuple(shape)}")
  reduction = _axes_tuple(dims.reduction_axis, ndim)
  output = _axes_tuple(dims.output_axis, ndim)
  if set(reduction) & set(output) or len(set(reduction)) < len(reduction) \
      or len(set(output)) < len(output):
    raise ValueError(f"reduction axes {reduction} and output axes {output} "
                     "must be distinct")
  batch = tuple(a for a in range(ndim) if a not in reduction + output)
  return MatrixAxes(batch, reduction, output)


def fans(shape: Sequence[int], axes: MatrixAxes) -> tuple[int, int]:
  """``(fan_in, fan_out)``: the products of the reduction and output sizes."""
  return (math.prod(shape[a] for a in axes.reduction),
          math.prod(shape[a] for a in axes.output))


def _replicated(x: jax.Array):
  """``x`` gathered whole when it is sharded over an explicit mesh axis
  (``jax.set_mesh`` with ``AxisType.Explicit``), and the spec to put it
  back: orthogonalization needs each matrix whole, and a reshape that
  merges a sharded axis is refused there."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  mesh = getattr(sharding, "mesh", None)
  if spec is None or mesh is None or all(s is None for s in spec):
    return x, None
  explicit = jax.sharding.AxisType.Explicit
  if not any(t == explicit for t in getattr(mesh, "axis_types", ())):
    return x, None
  return jax.sharding.reshard(x, jax.sharding.PartitionSpec()), spec


def to_matrices(x: jax.Array, axes: MatrixAxes) -> jax.Array:
  """``x`` as a stack of matrices ``(batch, fan_in, fan_out)``."""
  fan_in, fan_out = fans(x.shape, axes)
  order = axes.batch + axes.reduction + axes.output
  return jnp.transpose(x, order).reshape(-1, fan_in, fan_out)


def from_matrices(m: jax.Array, shape: Sequence[int],
                  axes: MatrixAxes) -> jax.Array:
  """The inverse of :func:`to_matrices`."""
  order = axes.batch + axes.reduction + axes.output
  return jnp.transpose(m.reshape([shape[a] for a in order]),
                       np.argsort(order))


def _matrix_view(x: jax.Array, dims: MuonDimensionNumbers | None):
  """``(m, axes, spec)``: leaf ``x`` gathered whole (:func:`_replicated`)
  as its stack of matrices in the accumulation dtype, its matrix axes, and
  the spec to shard the result back with (None: not sharded)."""
  axes = matrix_axes(x.shape, dims)
  whole, spec = _replicated(x)
  m = to_matrices(whole.astype(numerics.accumulation_dtype(x.dtype)), axes)
  return m, axes, spec


def _leaf_from_view(m: jax.Array, x: jax.Array, axes: MatrixAxes, spec):
  """The inverse of :func:`_matrix_view`: matrices ``m`` back in the shape,
  dtype and sharding of leaf ``x``."""
  out = from_matrices(m, x.shape, axes).astype(x.dtype)
  return out if spec is None else jax.sharding.reshard(out, spec)


def _pow2_scaled(x: jax.Array, axis=None):
  """``(x 2^-e, e)`` with ``2^e`` the power of two of ``max |x|`` (over
  ``axis``, keepdims; over everything for None)."""
  e = numerics.pow2_exponent(jnp.max(jnp.abs(x), axis=axis,
                                     keepdims=axis is not None))
  return numerics.pow2_rescale(x, e), e


def _mT(x):
  return jnp.swapaxes(x, -1, -2)


def newton_schulz(x: jax.Array, steps, coeffs: CoeffSpec = NS_COEFFS
                  ) -> jax.Array:
  """Approximately ``U Vᵀ`` for each matrix ``x = U S Vᵀ`` of a stack
  ``(..., m, n)`` with ``‖x‖₂ ≤ 1``.

  ``steps`` iterations of ``X ← a X + (b A + c A²) X``, ``A = X Xᵀ``, on the
  wide orientation (a tall ``x`` is transposed and back). Iteration ``i``
  uses row ``i`` of the coefficient table; past its last row the last row
  repeats (Polar Express's convention), so a single ``(a, b, c)`` is used at
  every step and a table longer than ``steps`` has its first ``steps`` rows
  used.
  """
  table = jnp.asarray(ns_table(coeffs), x.dtype)
  tall = x.shape[-2] > x.shape[-1]

  def step(i, y):
    a, b, c = table[jnp.minimum(i, table.shape[0] - 1)]
    gram = y @ _mT(y)
    return a * y + (b * gram + c * gram @ gram) @ y

  # fori_loop: ``steps`` may be traced (optax.inject_hyperparams)
  y = jax.lax.fori_loop(0, steps, step, _mT(x) if tall else x)
  return _mT(y) if tall else y


def polar_svd(x: jax.Array) -> jax.Array:
  """Exactly ``U Vᵀ`` for each ``x = U S Vᵀ`` (reduced SVD) of a stack
  ``(..., m, n)``, zero for ``x = 0``."""
  u, s, vt = jnp.linalg.svd(x, full_matrices=False)
  rank = s > s[..., :1] * max(x.shape[-2:]) * jnp.finfo(x.dtype).eps
  return (u * rank[..., None, :]) @ vt


def _safe_divide(x, d):
  return x / jnp.where(d > 0, d, 1)


def precondition(y: jax.Array, how: str, eps_scaled: jax.Array) -> jax.Array:
  """A stack of matrices ``(..., m, n)`` (largest entries near one) scaled so
  that each has spectral norm at most one, before Newton-Schulz.

  ``frobenius``: ``y / (‖y‖_F + ε)``; ``spectral``: ``y / (‖y‖₂ + ε)`` (an
  SVD); ``schatten``: ``y / ‖y‖_{S4}``, ``‖y‖_{S4}⁴ = ‖y yᵀ‖_F²``
  (Grishina et al., arXiv 2506.10935); ``aol``: ``S y`` with
  ``S = diag(Σ_j |A_ij|)^{-1/2}``, ``A = y yᵀ`` on the wide orientation
  (almost-orthogonal-layer rescaling, Boissin et al., arXiv 2512.04632).
  A zero matrix stays zero.
  """
  if how == "frobenius":
    norm = jnp.sqrt(jnp.sum(jnp.square(y), axis=(-2, -1), keepdims=True))
    return _safe_divide(y, norm + eps_scaled)
  if how == "spectral":
    top = jnp.linalg.svd(y, compute_uv=False)[..., :1, None]
    return _safe_divide(y, top + eps_scaled)
  tall = y.shape[-2] > y.shape[-1]
  w = _mT(y) if tall else y
  gram = w @ _mT(w)
  if how == "schatten":
    s4 = jnp.sqrt(jnp.sqrt(jnp.sum(jnp.square(gram), axis=(-2, -1),
                                   keepdims=True)))
    w = _safe_divide(w, s4)
  elif how == "aol":
    rows = jnp.sum(jnp.abs(gram), axis=-1, keepdims=True)
    w = w * jnp.where(rows > 0, jax.lax.rsqrt(jnp.where(rows > 0, rows, 1)),
                      0)
  else:
    raise ValueError(f"preconditioning must be one of "
                     f"{', '.join(map(repr, PRECONDITIONINGS))}, got {how!r}")
  return _mT(w) if tall else w


class SpectralMethod(NamedTuple):
  """How the spectral direction is computed (see :func:`orthogonalize`)."""
  ns_steps: Any = 5
  ns_coeffs: CoeffSpec = NS_COEFFS
  preconditioning: str = "frobenius"
  exact_svd: bool = False


DEFAULT_SPECTRAL = SpectralMethod()


def orthogonalize(m: jax.Array, eps, method: SpectralMethod):
  """The polar factors of a stack of matrices ``(batch, fan_in, fan_out)``
  and the dual (nuclear) norm of each, ``(batch,)``, exact at any scale.

  Each matrix is divided by the power of two of its largest entry (exact),
  preconditioned, then orthogonalized (Newton-Schulz, or an SVD).
  """
  y, e = _pow2_scaled(m, axis=(-2, -1))
  eps_scaled = jnp.ldexp(jnp.asarray(eps, y.dtype), -e)
  unit = precondition(y, method.preconditioning, eps_scaled)
  polar = polar_svd(unit) if method.exact_svd else newton_schulz(
      unit, method.ns_steps, method.ns_coeffs)
  inner = jnp.sum(y * polar, axis=(-2, -1), keepdims=True)
  return polar, jnp.ldexp(inner, e).reshape(-1)


# Matrices of at most this many entries are stacked with their equal-shaped
# peers for one batched Newton-Schulz. Measured (benchmarks/speed/batched_ns.py,
# XLA on a 2-core CPU, 100 square matrices): batched steps took 0.66x the
# one-by-one time at 32x32 and 0.89x at 64x64, but 1.6x at 128x128 and 1.4x
# at 256x256 (the concatenation and a slower batched matmul).
BATCH_MAX_ELEMENTS = 64 * 64


def spectral_directions(leaves: Sequence[jax.Array],
                        dims: Sequence[MuonDimensionNumbers | None], *,
                        eps: float, spectral: SpectralMethod = DEFAULT_SPECTRAL):
  """The spectral-norm directions of matrix leaves and their dual norms.

  Each leaf is read as its stack of matrices (``dims``). Small matrices
  (at most :data:`BATCH_MAX_ELEMENTS` entries) of equal shape and dtype,
  across leaves, are concatenated and orthogonalized by one batched
  iteration, then split back; larger ones are orthogonalized leaf by leaf.

  Returns:
    ``(directions, dual_norms)``: lists like ``leaves``; each direction in
    its leaf's dtype and sharding, each dual norm (summed over the leaf's
    batch axes) a scalar in the accumulation dtype.
  """
  views = [_matrix_view(x, d) for x, d in zip(leaves, dims)]
  same_shape: dict[tuple, list[int]] = {}
  for i, (m, _, _) in enumerate(views):
    small = m.shape[1] * m.shape[2] <= BATCH_MAX_ELEMENTS
    same_shape.setdefault((m.shape[1:], m.dtype) if small else i, []).append(i)
  out, duals = [None] * len(leaves), [None] * len(leaves)
  for members in same_shape.values():
    polar, inner = orthogonalize(
        jnp.concatenate([views[i][0] for i in members]), eps, spectral)
    start = 0
    for i in members:
      m, axes, spec = views[i]
      stop = start + m.shape[0]
      out[i] = _leaf_from_view(polar[start:stop], leaves[i], axes, spec)
      duals[i] = jnp.sum(inner[start:stop])
      start = stop
  return out, duals


def _unit_lines(m: jax.Array, axis: int):
  """Each line of a stack of matrices along ``axis`` over its ℓ2 norm; the
  dual norm (the sum of the norms)."""
  y, e = _pow2_scaled(m, axis=(-2, -1))
  norms = jnp.sqrt(jnp.sum(jnp.square(y), axis=axis, keepdims=True))
  return _safe_divide(y, norms), jnp.sum(jnp.ldexp(norms, e))


def direction(name: str, leaves: list[jax.Array], norm: jax.Array | None,
              *, eps: float, dims: MuonDimensionNumbers | None = None,
              axis_name: str | None = None):
  """The unit-norm direction of one block under norm ``name``.

  Args:
    name: ``"rms"``, ``"sign"``, ``"col"`` or ``"row"`` (``"l2"`` the
      caller does; ``"spectral"`` is :func:`spectral_directions`, batched
      across leaves).
    leaves: the block's leaves (one leaf for the matrix norms).
    norm: the block's exact ℓ2 norm (for rms, from
      :func:`numerics.block_norms`) or ℓ1 norm (for sign, its dual norm,
      from :func:`numerics.l1_norms`), else None.
    eps: added to the scalar the direction divides by (rms).
    dims: the matrix view of a matrix-norm leaf (None: 2-D default).
    axis_name: mapped axis over which the leaves are shards (rms).

  Returns:
    ``(directions, dual_norm)``: a list like ``leaves`` (each in its dtype)
    and a scalar in the accumulation dtype.
  """
  dtype = numerics.norm_dtype(leaves)
  if name == "rms":
    n = sum(x.size for x in leaves)
    if axis_name is not None:
      n = jax.lax.psum(n, axis_name)
    root_n = jnp.sqrt(jnp.asarray(n, dtype))
    out = [numerics.divide_by_norm(x, norm / root_n + eps) for x in leaves]
    return out, root_n * norm
  if name == "sign":
    # sign(±inf) is ±1: make a non-finite entry give NaN, so a bad gradient
    # shows in the step (apply_if_finite can skip it) instead of hiding in
    # the momentum forever.
    return [jnp.where(jnp.isfinite(x), jnp.sign(x), jnp.nan).astype(x.dtype)
            for x in leaves], norm.astype(dtype)
  if name not in ("col", "row"):
    raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")
  (x,) = leaves
  m, axes, spec = _matrix_view(x, dims)
  out, dual = _unit_lines(m, axis=-2 if name == "col" else -1)
  return [_leaf_from_view(out, x, axes, spec)], dual.astype(dtype)


def shape_factor(shape: Sequence[int], dims: MuonDimensionNumbers | None,
                 consistent_rms: float | None = None) -> float:
  """Muon's scale of an orthogonalized leaf: ``sqrt(max(1, fan_out/fan_in))``
  (Jordan et al.), or ``consistent_rms · sqrt(max(fan_in, fan_out))`` (Liu
  et al., Moonlight: an update RMS of ``consistent_rms``, AdamW's)."""
  fan_in, fan_out = fans(shape, matrix_axes(shape, dims))
  if consistent_rms is not None:
    return consistent_rms * math.sqrt(max(fan_in, fan_out))
  return math.sqrt(max(1.0, fan_out / fan_in))


DimsSpec = Any  # None, one MuonDimensionNumbers, a tree of them, a callable


def _is_dims_leaf(x) -> bool:
  return x is None or isinstance(x, MuonDimensionNumbers)


def leaf_dimension_numbers(spec: DimsSpec, tree) -> list:
  """One ``MuonDimensionNumbers`` or None per leaf of ``tree`` (in
  ``jax.tree.leaves`` order) from ``spec``: None, one value for every leaf,
  a tree shaped like ``tree`` or a prefix of it (a value stands for its
  whole subtree, as in optax), or a callable on ``tree`` giving one."""
  n = len(jax.tree.leaves(tree))
  if spec is None or isinstance(spec, MuonDimensionNumbers):
    return [spec] * n
  spec_tree = spec(tree) if callable(spec) else spec
  flat, treedef = jax.tree.flatten(spec_tree, is_leaf=_is_dims_leaf)
  try:
    subtrees = treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as err:
    raise ValueError(
        "weight_dimension_numbers must be a tree of "
        "optax.contrib.MuonDimensionNumbers or None shaped like the params "
        f"(or a prefix of them): {err}") from None
  out = []
  for dims, sub in zip(flat, subtrees):
    if not _is_dims_leaf(dims):
      raise ValueError("weight_dimension_numbers leaves must be "
                       f"MuonDimensionNumbers or None, got {dims!r}")
    out += [dims] * len(jax.tree.leaves(sub))
  return out


def checked_dimension_numbers(spec: DimsSpec, tree, selected,
                              who: str = "") -> list:
  """:func:`leaf_dimension_numbers`, with a ``ValueError`` naming (by its
  path, after ``who``) the first leaf flagged in ``selected`` (one bool per
  leaf) that has no matrix view."""
  per_leaf = leaf_dimension_numbers(spec, tree)
  for path, x, keep, dims in zip(numerics.leaf_paths(tree),
                                 jax.tree.leaves(tree), selected, per_leaf):
    if keep:
      try:
        matrix_axes(jnp.shape(x), dims)
      except ValueError as err:
        raise ValueError(f"{who}leaf {path}: {err}") from None
  return per_leaf
