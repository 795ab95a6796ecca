"""Gradient normalization: by the global norm, or block by block."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from normopt._src import blocks as blocks_lib
from normopt._src import lmo, numerics
from normopt._src.base import check_non_negative, check_positive_int


class NormalizeGlobalState(NamedTuple):
  """State of :func:`normalize_global`: the last global norm (diagnostic)."""
  norm: jax.Array


class NormalizePerBlockState(NamedTuple):
  """State of :func:`normalize_per_block`: the last (dual) norm of every
  block."""
  norms: Any


def normalize_global(
    *, eps: float = 0.0, axis_name: str | None = None
) -> optax.GradientTransformation:
  r"""Divides the whole update tree by its global L2 norm.

  .. math::
    g \leftarrow g / (\|g\|_2 + \epsilon), \qquad
    \|g\|_2^2 = \textstyle\sum_{\text{leaves}} \sum g_i^2 .

  The norm is accumulated in float32 (float64 for float64 leaves) and is exact
  at any magnitude (see :mod:`normopt._src.numerics`); each leaf keeps its
  dtype. A zero tree maps to a zero tree, never to NaN; ``None`` leaves and
  empty trees pass through.

  Data parallelism: average the gradients across replicas (``lax.pmean``)
  *before* this transformation. Normalizing each replica's gradient and then
  averaging gives a different, wrong direction. ``axis_name`` is for the
  other case, where each device holds a *shard* of one logical tree (model
  sharding under ``pmap``/``shard_map``): the squared norm is ``psum``-ed over
  that axis. Under ``jit`` with sharded arrays nothing is needed.

  Args:
    eps: added to the norm in the denominator (``eps >= 0``).
    axis_name: mapped axis over which the leaves are shards of one tree.

  Returns:
    An ``optax.GradientTransformation``; its state keeps the last norm.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.normalize_global()
    >>> u, _ = tx.update({'w': jnp.array([3., 4.])}, tx.init(None))
    >>> u['w']
    Array([0.6, 0.8], dtype=float32)

  References:
    Zhao, Xie, Li, *On the Convergence and Improvement of Stochastic
    Normalized Gradient Descent* (SNGM), 2020/2021, Alg. 1;
    Cutkosky & Mehta, *Momentum Improves Normalized SGD* (NIGT), 2020, eq. (3).
  """
  check_non_negative("eps", eps)

  def init_fn(params):
    return NormalizeGlobalState(norm=jnp.zeros((), numerics.norm_dtype(params)))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    numerics.check_float_leaves(updates)
    norm = numerics.global_norm(leaves, axis_name)
    out = [numerics.divide_by_norm(x, norm + eps) for x in leaves]
    return (jax.tree.unflatten(treedef, out),
            NormalizeGlobalState(norm.astype(state.norm.dtype)))

  return optax.GradientTransformation(init_fn, update_fn)


NormSpec = Union[lmo.NormName, Any, Callable[[Any], Any]]


def _norm_names(norm: NormSpec, updates, resolved) -> list[str]:
  """One norm name per block, checked."""
  if isinstance(norm, str):
    names = [norm] * len(jax.tree.leaves(updates))
  else:
    names = jax.tree.leaves(norm(updates) if callable(norm) else norm)
    if len(names) != len(jax.tree.leaves(updates)):
      raise ValueError(f"norm must give one name per leaf: got {len(names)} "
                       f"names for {len(jax.tree.leaves(updates))} leaves")
  for name in set(names):
    if name not in lmo.NORMS:
      raise ValueError(f"unknown norm {name!r}; choose one of "
                       f"{', '.join(lmo.NORMS)}")
  per_block = []
  for k, group in enumerate(resolved.groups):
    label = k if resolved.labels is None else resolved.labels[k]
    kinds = {names[i] for i in group}
    if len(kinds) > 1:
      raise ValueError(f"block {label!r} mixes norms {sorted(kinds)}")
    (kind,) = kinds
    if kind in lmo.MATRIX_NORMS and len(group) > 1:
      raise ValueError(f"block {label!r} groups {len(group)} leaves under the "
                       f"{kind!r} norm, which needs one matrix per block")
    per_block.append(kind)
  return per_block


def normalize_per_block(
    *,
    eps: float = 0.0,
    blocks: blocks_lib.BlockSpec = None,
    norm: NormSpec = "l2",
    ns_steps: int = 5,
    ns_coeffs: lmo.CoeffSpec = lmo.NS_COEFFS,
    preconditioning: str = "frobenius",
    exact_svd: bool = False,
    weight_dimension_numbers: lmo.DimsSpec = None,
    adaptive: bool = False,
    axis_name: str | None = None,
) -> optax.GradientTransformation:
  r"""Replaces each block by its unit-norm steepest direction.

  With the default ``norm="l2"`` each block is divided by its own L2 norm,
  as in the block-wise SNGM of the paper:

  .. math:: g^{(s)} \leftarrow g^{(s)} / (\|g^{(s)}\|_2 + \epsilon)

  Other norms give steepest descent under that norm (the linear
  minimization oracle of Pethick et al., Table 1):
  :math:`g^{(s)} \leftarrow \arg\max_{\|\Delta\| \le 1}
  \langle g^{(s)}, \Delta\rangle`, whose value
  :math:`\langle g^{(s)}, \cdot\rangle = \|g^{(s)}\|_*` (the dual norm) is
  kept in the state: ``"rms"`` (``√n g/‖g‖₂``), ``"sign"`` (``sign(g)``, the
  ℓ∞ ball: Signum), ``"col"`` / ``"row"`` (each column / row of the matrix
  over its own ℓ2 norm) and ``"spectral"`` (the polar factor ``U Vᵀ`` of
  ``g = U S Vᵀ``: Muon's orthogonalization). The matrix norms take one leaf
  per block and read it as matrices through ``weight_dimension_numbers``
  (optax's :class:`~optax.contrib.MuonDimensionNumbers`: reduction axes are
  rows, output axes columns, other axes a batch of separate matrices); a
  2-D leaf defaults to ``(0, 1)``, a leaf of more dimensions must be given
  its view (``(in, heads, head_dim)`` and ``(kh, kw, in, out)`` cannot be
  told apart by shape).

  By default a block is one leaf (one layer's tensor). A zero block maps to
  zeros, never to NaN; each leaf keeps its dtype; norms and directions are
  computed in float32 or wider and are exact at any gradient scale (the
  spectral iteration starts from the block over its exact Frobenius norm).

  Args:
    eps: added to the scalar each block is divided by (``eps >= 0``; l2,
      rms and spectral).
    blocks: ``None`` (one block per leaf), a tree of labels shaped like the
      params (equal labels form one block), or a callable params -> labels.
    norm: ``"l2"``, ``"spectral"``, ``"sign"``, ``"rms"``, ``"col"`` or
      ``"row"``; or a tree of such names shaped like the params (or a
      callable params -> names), one per leaf, equal within a block.
    ns_steps: Newton-Schulz iterations of the spectral norm.
    ns_coeffs: the iteration's ``(a, b, c)``: ``X ← aX + (bA + cA²)X``,
      ``A = XXᵀ`` (default: Jordan et al.'s quintic, which returns singular
      values in about [0.7, 1.1] rather than exactly 1, by design); or an
      ``(n, 3)`` table whose row ``i`` is used at iteration ``i`` (its last
      row repeating past its end; a longer table has its first ``ns_steps``
      rows used); or a preset: ``"standard"``, ``"dion"``,
      ``"polar_express"`` (Amsel et al., Alg. 1).
    preconditioning: how each matrix is brought to spectral norm ≤ 1
      before the iteration: ``"frobenius"`` (divide by ``‖·‖_F + eps``),
      ``"spectral"`` (by ``‖·‖₂ + eps``, an SVD), ``"schatten"`` (by the
      Schatten-4 norm), ``"aol"`` (row scaling ``diag(Σ_j|A_ij|)^{-1/2}``
      of ``A = XXᵀ``); optax's names and formulas, made exact at any scale.
    exact_svd: compute the spectral direction by SVD (exact ``U Vᵀ``; slow,
      for tests and references).
    weight_dimension_numbers: the matrix view of each leaf for the matrix
      norms: one :class:`optax.contrib.MuonDimensionNumbers`, a tree of them
      (or None) shaped like the params or a prefix of them, or a callable
      on the params returning one (the same values optax's Muon takes).
    adaptive: multiply each block's direction by its dual norm, the step
      of steepest descent with the dual-norm step size (Bernstein &
      Newhouse, *Old Optimizer, New Norm*, arXiv 2409.20325; optax Muon's
      ``adaptive``). Not scale-invariant, by design.
    axis_name: mapped axis over which the leaves are shards of one tree; the
      block sums are ``psum``-ed over it (l2, rms, sign; the matrix norms
      need whole matrices and raise).

  Returns:
    An ``optax.GradientTransformation``; its state keeps the last dual norm
    of every block (a tree like the params for per-leaf blocks, else a dict
    label -> norm).

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.normalize_per_block()
    >>> g = {'a': jnp.array([3., 4.]), 'b': jnp.array([0., 2.])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> u['b']
    Array([0., 1.], dtype=float32)
    >>> tx = normopt.normalize_per_block(norm="spectral", exact_svd=True)
    >>> g = {'w': jnp.array([[3., 0.], [0., 0.5]])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> u['w']
    Array([[1., 0.],
           [0., 1.]], dtype=float32)

  References:
    Zhao, Xie, Li, *On the Convergence and Improvement of Stochastic
    Normalized Gradient Descent* (SNGM), eq. (13)-(14);
    Pethick et al., *Training Deep Learning Models with Norm-Constrained
    LMOs* (Scion), ICML 2025, Table 1;
    Jordan et al., *Muon: An optimizer for hidden layers*, 2024.
  """
  check_non_negative("eps", eps)
  check_positive_int("ns_steps", ns_steps)
  lmo.ns_table(ns_coeffs)  # raises on a bad table or preset name
  if preconditioning not in lmo.PRECONDITIONINGS:
    raise ValueError(f"preconditioning must be one of "
                     f"{', '.join(map(repr, lmo.PRECONDITIONINGS))}, got "
                     f"{preconditioning!r}")
  spectral = lmo.SpectralMethod(ns_steps, ns_coeffs, preconditioning,
                                exact_svd)

  def init_fn(params):
    return NormalizePerBlockState(
        blocks_lib.filled(blocks, params, 0.0, numerics.norm_dtype(params)))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    numerics.check_float_leaves(updates)
    resolved = blocks_lib.resolve(blocks, updates)
    kinds = _norm_names(norm, updates, resolved)
    if axis_name is not None and any(k in lmo.MATRIX_NORMS for k in kinds):
      raise ValueError(
          "the spectral, col and row norms need each matrix whole: with "
          "axis_name the leaves are shards; gather them, or use jit with "
          "sharded arrays (GSPMD computes on the logical matrix)")
    needs_l2 = [k for k, kind in enumerate(kinds) if kind in ("l2", "rms")]
    matrix_leaves = {i for k, group in enumerate(resolved.groups)
                     if kinds[k] in lmo.MATRIX_NORMS for i in group}
    dims = lmo.checked_dimension_numbers(
        weight_dimension_numbers, updates,
        [i in matrix_leaves for i in range(len(leaves))])
    norms = numerics.block_norms(
        leaves, [resolved.groups[k] for k in needs_l2], axis_name)
    norms = dict(zip(needs_l2, norms))
    # sign's dual norm, the ℓ1 norm: one fast sum (numerics.l1_norms)
    needs_l1 = [k for k, kind in enumerate(kinds) if kind == "sign"]
    norms.update(zip(needs_l1, numerics.l1_norms(
        leaves, [resolved.groups[k] for k in needs_l1], axis_name)))
    # Every spectral block at once: small equal-shaped matrices share one
    # batched Newton-Schulz (lmo.spectral_directions).
    spectral_blocks = [k for k, kind in enumerate(kinds) if kind == "spectral"]
    spectral_out = {}
    if spectral_blocks:
      ds, ns = lmo.spectral_directions(
          [leaves[resolved.groups[k][0]] for k in spectral_blocks],
          [dims[resolved.groups[k][0]] for k in spectral_blocks], eps=eps,
          spectral=spectral)
      spectral_out = {k: ([d], n) for k, d, n in zip(spectral_blocks, ds, ns)}
    out = list(leaves)
    duals = []
    for k, group in enumerate(resolved.groups):
      if kinds[k] == "l2":
        for i in group:
          out[i] = numerics.divide_by_norm(leaves[i], norms[k] + eps)
        duals.append(norms[k])
        continue
      directions, dual = spectral_out[k] if k in spectral_out else (
          lmo.direction(kinds[k], [leaves[i] for i in group], norms.get(k),
                        eps=eps, dims=dims[group[0]], axis_name=axis_name))
      for i, d in zip(group, directions):
        out[i] = d * dual.astype(d.dtype) if adaptive else d
      duals.append(dual)
    dtypes = [x.dtype for x in jax.tree.leaves(state.norms)]
    new_norms = blocks_lib.to_tree(
        resolved, [n.astype(d) for n, d in zip(duals, dtypes)], updates)
    return jax.tree.unflatten(treedef, out), NormalizePerBlockState(new_norms)

  return optax.GradientTransformation(init_fn, update_fn)
