"""Gradient normalization: by the global norm, or block by block."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._src import blocks as blocks_lib
from normopt._src import numerics
from normopt._src.base import check_non_negative


class NormalizeGlobalState(NamedTuple):
  """State of :func:`normalize_global`: the last global norm (diagnostic)."""
  norm: jax.Array


class NormalizePerBlockState(NamedTuple):
  """State of :func:`normalize_per_block`: the last norm of every block."""
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
    numerics.check_float_leaves(leaves)
    norm = numerics.global_norm(leaves, axis_name)
    out = [numerics.divide_by_norm(x, norm + eps) for x in leaves]
    return (jax.tree.unflatten(treedef, out),
            NormalizeGlobalState(norm.astype(state.norm.dtype)))

  return optax.GradientTransformation(init_fn, update_fn)


def normalize_per_block(
    *,
    eps: float = 0.0,
    blocks: blocks_lib.BlockSpec = None,
    axis_name: str | None = None,
) -> optax.GradientTransformation:
  r"""Divides each block of the update tree by that block's own L2 norm.

  .. math:: g^{(s)} \leftarrow g^{(s)} / (\|g^{(s)}\|_2 + \epsilon)

  By default a block is one leaf (one layer's tensor), as in the block-wise
  SNGM of the paper. A zero block maps to zeros, never to NaN; each leaf
  keeps its dtype; norms are accumulated in float32 or wider.

  Args:
    eps: added to each block norm in the denominator (``eps >= 0``).
    blocks: ``None`` (one block per leaf), a tree of labels shaped like the
      params (equal labels form one block), or a callable params -> labels.
    axis_name: mapped axis over which the leaves are shards of one tree; the
      squared block norms are ``psum``-ed over it.

  Returns:
    An ``optax.GradientTransformation``; its state keeps the last block norms
    (a tree like the params for per-leaf blocks, else a dict label -> norm).

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.normalize_per_block()
    >>> g = {'a': jnp.array([3., 4.]), 'b': jnp.array([0., 2.])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> u['b']
    Array([0., 1.], dtype=float32)

  References:
    Zhao, Xie, Li, *On the Convergence and Improvement of Stochastic
    Normalized Gradient Descent* (SNGM), eq. (13)-(14).
  """
  check_non_negative("eps", eps)

  def init_fn(params):
    return NormalizePerBlockState(
        blocks_lib.filled(blocks, params, 0.0, numerics.norm_dtype(params)))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    numerics.check_float_leaves(leaves)
    resolved = blocks_lib.resolve(blocks, updates)
    norms = numerics.block_norms(leaves, resolved.groups, axis_name)
    out = list(leaves)
    for k, group in enumerate(resolved.groups):
      for i in group:
        out[i] = numerics.divide_by_norm(leaves[i], norms[k] + eps)
    dtypes = [x.dtype for x in jax.tree.leaves(state.norms)]
    new_norms = blocks_lib.to_tree(
        resolved, [n.astype(d) for n, d in zip(norms, dtypes)], updates)
    return jax.tree.unflatten(treedef, out), NormalizePerBlockState(new_norms)

  return optax.GradientTransformation(init_fn, update_fn)
