"""Per-example gradient norms of each block, for CLARS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from normopt._src import blocks as blocks_lib
from normopt._src import numerics
from normopt._src import probes as probes_lib


def per_example_block_norms(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Any,
    *,
    blocks: blocks_lib.BlockSpec = None,
    chunk_size: int | None = None,
    num_examples: int | None = None,
    probed: bool = False,
) -> tuple[jax.Array, Any, Any]:
  r"""Mean loss, mean gradient and the mean per-example gradient norm per block.

  For every block :math:`k` (by default one leaf; see
  :func:`normalize_per_block`) this computes
  :math:`\frac1B \sum_i \|\nabla_k f_i(w)\|`, the denominator of CLARS
  (eq. 5), exactly: ``vmap`` of ``grad`` over the examples. The mean loss and
  the mean gradient come out of the same pass, so a training step pays for
  one pass, not two.

  Two paths compute the same numbers:

  * exact (default): ``vmap`` of ``grad`` over the examples;
  * ``probed=True``: ``loss_fn(params, batch, probes)`` routes every leaf
    through a probed layer (:func:`probed_dense`, :func:`probed`), so the
    norms come out of one ordinary backward pass (outer-product and Gram
    identities for dense and unfolded convolution layers) without forming
    per-example gradients of the whole model. ``loss_fn`` must then be the
    mean over the examples of the batch.

  Memory (exact path): per-example gradients are materialised for
  ``chunk_size`` examples at a time (``lax.map`` over chunks), so the peak
  extra memory is about ``chunk_size x`` the size of the params. Norms are
  accumulated in float32 or wider and are exact at any magnitude (both paths
  rescue sums of squares that overflow or underflow).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar mean loss`` over a batch whose
      leaves have a leading example axis (it is called on batches of one).
    params: the params.
    batch: a pytree of arrays with a common leading example axis ``B``.
    blocks: block specification, as for :func:`trust_ratio`.
    chunk_size: examples per vectorised chunk (must divide ``B``); ``None``
      does all ``B`` at once.
    num_examples: the CLARS paper's sub-batch approximation: estimate the
      norms from the first ``num_examples`` examples only (the loss and
      gradient still use the whole batch, by one ordinary ``grad``).
    probed: use the probe path; ``loss_fn`` takes ``probes`` (a tree like
      the params of ``(B,)`` vectors) as a third argument. Raises a
      ``ValueError`` naming any leaf whose probe the loss does not use.

  Returns:
    ``(loss, grads, norms)``: the mean loss, the mean gradient (like
    ``params``) and the mean per-example norms (a tree of scalars like the
    params for per-leaf blocks, else a dict label -> norm) -- pass them to
    ``clars`` as ``per_example_norms``.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> def loss(p, b):
    ...   return jnp.mean((b['x'] @ p['w'] - b['y']) ** 2)
    >>> p = {'w': jnp.ones((3,))}
    >>> b = {'x': jnp.eye(3), 'y': jnp.zeros(3)}
    >>> l, g, norms = normopt.per_example_block_norms(loss, p, b)
    >>> float(norms['w'])  # each example's gradient is 2 e_i
    2.0

  References:
    Huo, Gu, Huang, *Large Batch Optimization for Deep Learning Using New
    Complete Layer-wise Adaptive Rate Scaling*, AAAI 2021, Alg. 1, eq. (5).
  """
  size = batch_size(batch)
  resolved = blocks_lib.resolve(blocks, params)
  if num_examples is not None:
    if not 0 < num_examples <= size:
      raise ValueError(f"num_examples must be in [1, {size}], got "
                       f"{num_examples}")
    full = (lambda p, b: loss_fn(p, b, probes_lib.norm_probes(p, size))
            ) if probed else loss_fn
    loss, grads = jax.value_and_grad(full)(params, batch)
    subset = jax.tree.map(lambda x: x[:num_examples], batch)
    _, _, norms = per_example_block_norms(loss_fn, params, subset,
                                          blocks=blocks, chunk_size=chunk_size,
                                          probed=probed)
    return loss, grads, norms
  loss, grads, matrix = example_norm_matrix(
      loss_fn, params, batch, resolved, chunk_size=chunk_size, probed=probed)
  norms = jnp.mean(matrix, 1)
  return loss, grads, blocks_lib.to_tree(resolved, list(norms), params)


def batch_size(batch) -> int:
  """The common leading (example) axis of the leaves of ``batch``."""
  sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(f"batch leaves must share the leading axis, got {sizes}")
  return sizes.pop()


def example_norm_matrix(loss_fn, params, batch, resolved, *,
                        chunk_size: int | None = None, probed: bool = False):
  """``(loss, grads, N)``: the mean loss and gradient of the batch and
  ``N[k, i] = ‖∇_k f_i‖``, every example's gradient norm in every block
  (``(blocks, B)``), from one pass (exact or probed path, see
  :func:`per_example_block_norms`)."""
  size = batch_size(batch)
  if probed:
    if chunk_size is not None:
      raise ValueError("chunk_size applies to the exact path only; the probe "
                       "path needs no per-example gradients of the model")
    return _probed_norms(loss_fn, params, batch, size, resolved)
  chunk = size if chunk_size is None else chunk_size
  if chunk < 1 or size % chunk:
    raise ValueError(f"chunk_size must divide the batch size {size}, got "
                     f"{chunk_size}")

  def one(example):
    single = jax.tree.map(lambda x: x[None], example)
    return jax.value_and_grad(loss_fn)(params, single)

  dtype = numerics.norm_dtype(params)

  def per_chunk(chunk_batch):
    losses, grads = jax.vmap(one)(chunk_batch)
    leaf_norms = [numerics.example_norms(numerics.example_sum_sq,
                                         g.astype(dtype))
                  for g in jax.tree.leaves(grads)]
    return (jnp.sum(losses), jax.tree.map(lambda g: jnp.sum(g, 0), grads),
            _group_norms(leaf_norms, resolved))

  chunks = jax.tree.map(
      lambda x: x.reshape(size // chunk, chunk, *x.shape[1:]), batch)
  losses, grads, norms = jax.lax.map(per_chunk, chunks)  # (chunks, blocks, c)
  loss = jnp.sum(losses) / size
  grads = jax.tree.map(lambda g, p: (jnp.sum(g, 0) / size).astype(p.dtype),
                       grads, params)
  return loss, grads, jnp.moveaxis(norms, 0, 1).reshape(norms.shape[1], size)


def _group_norms(leaf_norms, resolved) -> jax.Array:
  """Per-example block norms (blocks, B) from per-example leaf norms."""
  return jnp.stack([numerics.hypot([leaf_norms[i] for i in group])
                    for group in resolved.groups])


def _unused_inputs(fn, *args) -> list[int]:
  """Flat indices of the inputs of ``fn(*args)`` that its jaxpr never reads."""
  closed = jax.make_jaxpr(fn)(*args)
  used = {id(v) for eqn in closed.jaxpr.eqns for v in eqn.invars}
  used |= {id(v) for v in closed.jaxpr.outvars}
  return [i for i, v in enumerate(closed.jaxpr.invars) if id(v) not in used]


def _probed_norms(loss_fn, params, batch, size, resolved):
  probes = probes_lib.norm_probes(params, size)
  unused = _unused_inputs(lambda pr: loss_fn(params, batch, pr), probes)
  if unused:
    paths = [jax.tree_util.keystr(path) for path, _ in
             jax.tree_util.tree_flatten_with_path(probes)[0]]
    raise ValueError(
        "probed=True needs every param leaf routed through a probed layer "
        "(normopt.probed_dense / normopt.probed); these probes are unused: "
        + ", ".join(paths[i] for i in unused))

  def one_pass(safe):
    loss, (grads, leaf_norms) = jax.value_and_grad(loss_fn, argnums=(0, 2))(
        params, batch, probes_lib.norm_probes(params, size, safe=safe))
    # The probes hold ||grad of (f_i / B)||: scale back to ||grad f_i||.
    return loss, grads, size * _group_norms(jax.tree.leaves(leaf_norms),
                                            resolved)

  # The plain pass, redone with overflow-safe probes only if a block's mean
  # norm overflowed or is small enough that flushed subnormal terms could
  # matter (examples that underflow alone barely move a mean dominated by
  # the others).
  fast = one_pass(False)
  mean = jnp.mean(fast[2], 1)
  leaves = jax.tree.leaves(params)
  terms = jnp.asarray([sum(leaves[i].size for i in g)
                       for g in resolved.groups], mean.dtype)
  bad = ~jnp.isfinite(mean) | (
      jnp.square(mean / size) < numerics.underflow_threshold(mean.dtype, terms))
  return jax.lax.cond(jnp.any(bad), lambda: one_pass(True), lambda: fast)
