"""The gradient noise scale: how large a batch pays off (McCandlish et al.)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._src import blocks as blocks_lib
from normopt._src import numerics, per_example
from normopt._src.base import check_in_range, find_one_state


class NoiseScaleEstimate(NamedTuple):
  """One batch's estimates (see :func:`gradient_noise_scale`).

  Attributes:
    simple: :math:`B_\\text{simple} = \\operatorname{tr}(\\Sigma)/\\|G\\|^2`.
    trace: the unbiased estimate of :math:`\\operatorname{tr}(\\Sigma)`, the
      per-example gradient covariance's trace, over all leaves.
    grad_sq: the unbiased estimate of :math:`\\|G\\|^2`, the true gradient's
      squared norm.
    block_trace: ``trace`` per block (like the params for per-leaf blocks,
      else a dict label -> value): the CLARS paper's per-layer variance.
    block_grad_sq: ``grad_sq`` per block.
  """
  simple: jax.Array
  trace: jax.Array
  grad_sq: jax.Array
  block_trace: Any
  block_grad_sq: Any


def gradient_noise_scale(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    batch: Any,
    *,
    blocks: blocks_lib.BlockSpec = None,
    chunk_size: int | None = None,
    probed: bool = False,
) -> tuple[jax.Array, Any, NoiseScaleEstimate]:
  r"""One batch's estimate of the simple gradient noise scale.

  With :math:`B` examples, :math:`S = \frac1B \sum_i \|g_i\|^2` (the mean
  per-example squared gradient norm) and :math:`\bar g` the batch's mean
  gradient, the unbiased estimators of McCandlish et al. (App. A.1) are

  .. math::
    \|G\|^2 \approx \frac{B\|\bar g\|^2 - S}{B - 1}, \qquad
    \operatorname{tr}(\Sigma) \approx \frac{B (S - \|\bar g\|^2)}{B - 1},
    \qquad B_\text{simple} = \frac{\operatorname{tr}(\Sigma)}{\|G\|^2},

  over all leaves and per block. :math:`B_\text{simple}` is the batch size
  beyond which a larger batch buys few fewer steps; a single batch's ratio is
  noisy and biased, so track the two estimators with
  :func:`track_noise_scale` and take the ratio of their averages.

  The per-example norms come from the same pass as the mean loss and
  gradient, on the exact path (``vmap`` of ``grad``) or the probed one (no
  per-example gradients of the model), with the conventions of
  :func:`per_example_block_norms`. Everything is computed after rescaling
  by a power of two, so :math:`B_\text{simple}` is exact at any loss scale
  (the estimators themselves may exceed the dtype's range).

  Args:
    loss_fn: ``loss_fn(params, batch) -> mean loss`` (``probed=True``:
      ``loss_fn(params, batch, probes)``).
    params: the params.
    batch: a pytree of arrays with a common leading example axis ``B >= 2``.
    blocks: block specification for the per-block estimates.
    chunk_size: examples per vectorised chunk (exact path).
    probed: use the probe path.

  Returns:
    ``(loss, grads, estimate)``: the mean loss, the mean gradient and a
    :class:`NoiseScaleEstimate`.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> loss = lambda p, b: jnp.mean((b['x'] @ p['w'] - b['y']) ** 2)
    >>> b = {'x': jnp.ones((4, 1)), 'y': jnp.array([1., 2., 3., 4.])}
    >>> _, _, est = normopt.gradient_noise_scale(loss, {'w': jnp.zeros(1)}, b)
    >>> print(f"{float(est.simple):.4f}")  # tr = 20/3, |G|^2 = 70/3
    0.2857

  References:
    McCandlish, Kaplan, Amodei et al., *An Empirical Model of Large-Batch
    Training*, 2018, Sec. 2 and App. A.1, https://arxiv.org/abs/1812.06162;
    Huo, Gu, Huang, *Large Batch Training Does Not Need Warmup*, 2020,
    Sec. 4.3 (the per-layer variance).
  """
  size = per_example.batch_size(batch)
  if size < 2:
    raise ValueError(f"the noise scale needs a batch of at least 2 examples, "
                     f"got {size}")
  resolved = blocks_lib.resolve(blocks, params)
  loss, grads, matrix = per_example.example_norm_matrix(
      loss_fn, params, batch, resolved, chunk_size=chunk_size, probed=probed)
  mean_norms = jnp.stack(numerics.block_norms(
      jax.tree.leaves(grads), resolved.groups)).astype(matrix.dtype)
  # One power of two for everything: the ratios are scale-free and the
  # squares below neither overflow nor underflow.
  e = numerics.pow2_exponent(jnp.maximum(jnp.max(matrix, initial=0),
                                         jnp.max(mean_norms, initial=0)))
  scaled = numerics.pow2_rescale(matrix, e)
  scaled_mean = numerics.pow2_rescale(mean_norms, e)
  mean_sq = jnp.mean(jnp.square(scaled), 1)  # S per block, times 2^-2e
  grad_sq_batch = jnp.square(scaled_mean)
  b = float(size)
  block_grad_sq = (b * grad_sq_batch - mean_sq) / (b - 1)
  block_trace = b * (mean_sq - grad_sq_batch) / (b - 1)
  trace, grad_sq = jnp.sum(block_trace), jnp.sum(block_grad_sq)
  simple = trace / grad_sq

  def unscale(x):
    return jnp.ldexp(x, 2 * e)

  estimate = NoiseScaleEstimate(
      simple=simple, trace=unscale(trace), grad_sq=unscale(grad_sq),
      block_trace=blocks_lib.to_tree(resolved, list(unscale(block_trace)),
                                     params),
      block_grad_sq=blocks_lib.to_tree(
          resolved, list(unscale(block_grad_sq)), params))
  return loss, grads, estimate


class NoiseScaleState(NamedTuple):
  """State of :func:`track_noise_scale`: moving averages.

  Attributes:
    count: number of estimates seen.
    trace: the moving average of :math:`\\operatorname{tr}(\\Sigma)`
      (not debiased: the factor ``1 - decay^count`` cancels in the ratio).
    grad_sq: the moving average of :math:`\\|G\\|^2`, likewise.
    block_trace: ``trace`` per block (like the estimate's).
    block_grad_sq: ``grad_sq`` per block.
  """
  count: jax.Array
  trace: jax.Array
  grad_sq: jax.Array
  block_trace: Any
  block_grad_sq: Any


def track_noise_scale(decay: float = 0.95, *,
                      blocks: blocks_lib.BlockSpec = None,
                      ) -> optax.GradientTransformationExtraArgs:
  r"""Tracks the noise scale across steps; passes the updates through.

  Keeps exponential moving averages of the two unbiased estimators of
  :func:`gradient_noise_scale` (McCandlish et al. average numerator and
  denominator separately: the ratio of two noisy single-batch estimates is
  biased) and reports :math:`B_\text{simple}` as the ratio of their
  averages, :func:`noise_scale_of` ``(state)``, globally and per block
  (:func:`telemetry` reports both). Put it anywhere in a chain and pass the
  step's estimate as the extra argument ``noise_estimate``; steps without
  one leave the averages unchanged.

  The averages are kept in float32 (float64 under x64): at gradient scales
  where :math:`\operatorname{tr}(\Sigma)` itself exceeds that range
  (per-example gradient norms beyond about 1e19 in float32) they overflow;
  the single-batch :func:`gradient_noise_scale` ratio stays exact there.

  Args:
    decay: the averages' decay in [0, 1).
    blocks: the block specification the estimates were made with.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that leaves the updates
    unchanged.

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> tx = optax.chain(normopt.track_noise_scale(0.9), normopt.sngm(0.1))
    >>> loss = lambda p, b: jnp.mean((b['x'] @ p['w'] - b['y']) ** 2)
    >>> b = {'x': jnp.ones((4, 1)), 'y': jnp.array([1., 2., 3., 4.])}
    >>> w = {'w': jnp.zeros(1)}
    >>> state = tx.init(w)
    >>> _, g, est = normopt.gradient_noise_scale(loss, w, b)
    >>> u, state = tx.update(g, state, w, noise_estimate=est)
    >>> bool(jnp.isclose(normopt.noise_scale_of(state), est.simple))
    True

  References:
    McCandlish, Kaplan, Amodei et al., *An Empirical Model of Large-Batch
    Training*, 2018, App. A.1, https://arxiv.org/abs/1812.06162.
  """
  check_in_range("decay", decay, 0.0, 1.0, high_inclusive=False)

  def init_fn(params):
    dtype = numerics.norm_dtype(params)
    zeros = blocks_lib.filled(blocks, params, 0.0, dtype)
    return NoiseScaleState(jnp.zeros((), jnp.int32), jnp.zeros((), dtype),
                           jnp.zeros((), dtype), zeros, zeros)

  def update_fn(updates, state, params=None, *, noise_estimate=None,
                **extra_args):
    del params, extra_args
    if noise_estimate is None:
      return updates, state
    def average(old, new):
      return jax.tree.map(
          lambda o, n: decay * o + (1 - decay) * n.astype(o.dtype), old, new)

    return updates, NoiseScaleState(
        optax.safe_increment(state.count),
        average(state.trace, noise_estimate.trace),
        average(state.grad_sq, noise_estimate.grad_sq),
        average(state.block_trace, noise_estimate.block_trace),
        average(state.block_grad_sq, noise_estimate.block_grad_sq))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def noise_scale_of(opt_state: Any) -> jax.Array:
  """:math:`B_\\text{simple}` from the averages of the (only)
  :func:`track_noise_scale` link in ``opt_state`` (NaN before any estimate).

  Args:
    opt_state: a state holding exactly one ``NoiseScaleState``.

  Returns:
    The ratio of the averaged trace to the averaged squared gradient norm.
  """
  state = find_one_state(opt_state, NoiseScaleState, "noise_scale_of",
                         "normopt.track_noise_scale")
  # The debiasing factors 1 - decay^count cancel in the ratio.
  return state.trace / state.grad_sq
