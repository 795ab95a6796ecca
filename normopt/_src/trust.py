"""Layer-wise trust ratios: LARS and CLARS."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Union, get_args

import jax
import jax.numpy as jnp
import optax

from normopt._src import blocks as blocks_lib
from normopt._src import numerics
from normopt._src.base import check_choice, check_non_negative, check_positive

Mask = Union[None, bool, Any, Callable[[Any], Any]]


# What trust_ratio did to each block at the last step (TrustRatioState.status).
SCALED = 0  # scaled by its trust ratio
MASKED_OUT = 1  # left out by the mask: passed through unchanged
ZERO_WEIGHT_NORM = 2  # ‖w‖ = 0: scaled as if ‖w‖ = 1
ZERO_DENOMINATOR = 3  # ‖g‖ + λ‖w‖ + eps = 0: a zero update


class TrustRatioState(NamedTuple):
  """State of :func:`trust_ratio` (diagnostics, see :func:`telemetry`).

  Attributes:
    ratios: the last ratio of every block (1 for masked-out blocks).
    status: what was done to every block at the last step, an int8 code:
      0 scaled, 1 masked out, 2 zero weight norm (scaled as if ``‖w‖ = 1``),
      3 zero denominator (a zero update).
  """
  ratios: Any
  status: Any


def exclude_bias_and_norm(params):
  """The default trust-ratio mask: True for leaves with two or more dims.

  Biases and the scales/offsets of normalization layers are vectors (or
  scalars); the LARS and CLARS papers exclude them from layer-wise scaling
  and from weight decay. Pass your own mask to change this.

  Args:
    params: the params (any pytree of arrays).

  Returns:
    A tree like ``params`` of Python bools.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


TrustRatioKind = Literal["lars", "clars"]


def trust_ratio(
    kind: TrustRatioKind = "lars",
    *,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    weight_decay: float = 0.0,
    clip: float | None = None,
    mask: Mask = None,
    blocks: blocks_lib.BlockSpec = None,
    axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each block of the update by its layer-wise trust ratio.

  For every block (by default one leaf) selected by ``mask``:

  .. math::
    u^{(s)} = r^{(s)} (g^{(s)} + \lambda w^{(s)}), \qquad
    r^{(s)} = \frac{k \|w^{(s)}\|}{D^{(s)} + \lambda \|w^{(s)}\| + \epsilon},

  with :math:`k` = ``trust_coefficient``, :math:`\lambda` = ``weight_decay``,
  and :math:`D^{(s)} = \|g^{(s)}\|` for ``kind="lars"`` (CLARS paper eq. 3) or
  :math:`D^{(s)} = \frac1B\sum_i \|\nabla^{(s)} f_i\|`, the mean of the
  per-example gradient norms, for ``kind="clars"`` (CLARS paper eq. 5). CLARS
  takes those norms as the extra argument ``per_example_norms`` of
  ``update``: a tree of scalars with one entry per block (shaped like the
  params for per-leaf blocks, else a dict label -> norm).

  Masked-out blocks pass through unchanged (no decay, no scaling).
  Safety, where the plain formula would fail: a block whose ``‖w‖`` is zero
  is scaled as if ``‖w‖ = 1`` (its step has norm ``k·lr``, where
  ``optax.scale_by_trust_ratio`` uses ratio 1, a step ~1/k = 1000x larger
  than its neighbours'); a zero denominator gives a zero update; nothing
  yields NaN for finite input.

  Args:
    kind: ``"lars"`` or ``"clars"``.
    trust_coefficient: ``k`` above (η in the papers), ``> 0``.
    eps: added to the denominator, ``>= 0``.
    weight_decay: λ above, ``>= 0``; added to the update before scaling.
    clip: if set, ratios are clipped to at most this value.
    mask: ``None`` (the default: :func:`exclude_bias_and_norm`), ``True``
      (every leaf), a tree of bools like the params, or a callable params ->
      such tree. (The default is ``None`` rather than the function so that
      ``optax.inject_hyperparams`` does not mistake it for a schedule.)
    blocks: block specification (see :func:`normalize_per_block`).
    axis_name: the mapped axis over which each leaf is sharded: squared
      norms of ``w`` (and ``g`` for LARS) are summed over it. CLARS's
      ``per_example_norms`` are already whole-model values: under data
      parallelism average them with the gradients before ``update``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; it needs ``params``.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.trust_ratio("lars", trust_coefficient=1.0, mask=True)
    >>> w = {'k': jnp.full((2, 2), 2.)}
    >>> u, _ = tx.update({'k': jnp.full((2, 2), 0.5)}, tx.init(w), w)
    >>> u['k'][0, 0]  # ratio ‖w‖/‖g‖ = 4 / 1
    Array(2., dtype=float32)

  References:
    You, Gitman, Ginsburg, *Large Batch Training of Convolutional Networks*
    (LARS), 2017; Huo, Gu, Huang, *Large Batch Optimization for Deep
    Learning Using New Complete Layer-wise Adaptive Rate Scaling* (CLARS),
    2021, eq. (3) and (5).
  """
  check_choice("kind", kind, get_args(TrustRatioKind))
  check_positive("trust_coefficient", trust_coefficient)
  check_non_negative("eps", eps)
  check_non_negative("weight_decay", weight_decay)
  if clip is not None:
    check_non_negative("clip", clip)

  def init_fn(params):
    n = len(jax.tree.leaves(params))
    if n and not any(_selected_blocks(mask, params,
                                      blocks_lib.resolve(blocks, params))):
      warnings.warn(
          f"trust_ratio: the mask selects none of the {n} leaves, so no "
          "trust ratio is applied and LARS / CLARS / LAMB reduce to their "
          "base method (momentum SGD or Adam) at this learning rate; check "
          "the mask (mask=True selects every leaf)", stacklevel=2)
    return TrustRatioState(
        blocks_lib.filled(blocks, params, 1.0, numerics.norm_dtype(params)),
        blocks_lib.filled(blocks, params, MASKED_OUT, jnp.int8))

  def update_fn(updates, state, params=None, *, per_example_norms=None,
                **extra_args):
    del extra_args
    if params is None:
      raise ValueError("trust_ratio needs params: call update(g, state, params)")
    g_leaves, treedef = jax.tree.flatten(updates)
    w_leaves = treedef.flatten_up_to(params)
    numerics.check_float_leaves(updates)
    numerics.check_float_leaves(params, "params")
    resolved = blocks_lib.resolve(blocks, params)
    selected = _selected_blocks(mask, params, resolved)
    groups = [g for g, keep in zip(resolved.groups, selected) if keep]
    if kind == "lars":  # weight and gradient norms in one reduction
      n = len(w_leaves)
      norms = numerics.block_norms(
          w_leaves + g_leaves, groups + [[i + n for i in g] for g in groups],
          axis_name)
      w_norms, denominators = norms[:len(groups)], norms[len(groups):]
    else:
      w_norms = numerics.block_norms(w_leaves, groups, axis_name)
      denominators = _mean_example_norms(
          blocks_lib.drop_masked(per_example_norms, params), resolved, selected)

    decays = not (isinstance(weight_decay, (int, float)) and weight_decay == 0)
    out = list(g_leaves)
    scaled_ratios, scaled_status = [], []
    for group, w_norm, denominator in zip(groups, w_norms, denominators):
      ratio, status = _block_ratio(w_norm, denominator, trust_coefficient,
                                   weight_decay, eps, clip)
      scaled_ratios.append(ratio)
      scaled_status.append(status)
      for i in group:
        out[i] = _scale_leaf(ratio, g_leaves[i],
                             w_leaves[i] if decays else None, weight_decay)
    ratios_iter, status_iter = iter(scaled_ratios), iter(scaled_status)
    ratios, status = [], []
    for keep, old in zip(selected, jax.tree.leaves(state.ratios)):
      ratios.append((next(ratios_iter) if keep else jnp.ones(())).astype(
          old.dtype))
      status.append(next(status_iter) if keep else jnp.asarray(
          MASKED_OUT, jnp.int8))
    return (jax.tree.unflatten(treedef, out), TrustRatioState(
        blocks_lib.to_tree(resolved, ratios, params),
        blocks_lib.to_tree(resolved, status, params)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@functools.partial(jax.jit, static_argnames="clip")
def _block_ratio(w_norm, denominator, trust_coefficient, weight_decay, eps,
                 clip):
  """One block's ratio and status code (jitted: traced once for all blocks)."""
  total = denominator.astype(w_norm.dtype) + weight_decay * w_norm + eps
  ratio = jnp.where(w_norm > 0, trust_coefficient * w_norm, trust_coefficient)
  ratio = jnp.where(total > 0, ratio / jnp.where(total > 0, total, 1), 0.0)
  if clip is not None:
    ratio = jnp.minimum(ratio, clip)
  status = jnp.where(total > 0, jnp.where(w_norm > 0, SCALED, ZERO_WEIGHT_NORM),
                     ZERO_DENOMINATOR).astype(jnp.int8)
  return ratio, status


@jax.jit
def _scale_leaf(ratio, g, w, weight_decay):
  """``ratio (g + λ w)`` in f32 or wider, cast to g's dtype (``w`` None:
  no decay, and w is not read)."""
  dtype = numerics.accumulation_dtype(g.dtype)
  decayed = g.astype(dtype)
  if w is not None:
    decayed = decayed + weight_decay * w.astype(dtype)
  return (ratio.astype(dtype) * decayed).astype(g.dtype)


def _selected_blocks(mask: Mask, params, resolved) -> list[bool]:
  """Whether each block is trust-ratioed: all of its leaves must be masked in."""
  if mask is True:
    return [True] * len(resolved.groups)
  if mask is None:
    mask = exclude_bias_and_norm
  mask_tree = mask(params) if callable(mask) else mask
  flags = [bool(f) for f in jax.tree.leaves(mask_tree)]
  if len(flags) != len(jax.tree.leaves(params)):
    raise ValueError("mask must have one boolean per params leaf")
  return [all(flags[i] for i in g) for g in resolved.groups]


def _mean_example_norms(per_example_norms, resolved, selected):
  if per_example_norms is None:
    raise ValueError(
        "trust_ratio(kind='clars') needs the mean per-example gradient norm "
        "of every block: call update(g, state, params, per_example_norms=...) "
        "with the tree returned by normopt.per_example_block_norms")
  values = blocks_lib.from_tree(resolved, per_example_norms)
  if len(values) != len(resolved.groups):
    raise ValueError(
        f"per_example_norms has {len(values)} entries for "
        f"{len(resolved.groups)} blocks")
  values = [jnp.asarray(v) for v, keep in zip(values, selected) if keep]
  for v in values:
    if v.shape != ():
      raise ValueError(
          f"per_example_norms must hold one scalar per block, got shape {v.shape}")
  return values
