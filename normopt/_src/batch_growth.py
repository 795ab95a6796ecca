"""Batch growth driven by the measured gradient noise scale."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._src import blocks as blocks_lib
from normopt._src import numerics
from normopt._src.base import check_in_range, check_positive, check_positive_int
from normopt._src.noise_scale import NoiseScaleEstimate


class BatchGrowthState(NamedTuple):
  """State of :func:`batch_growth` (arrays only: it checkpoints as is).

  Attributes:
    multi_steps: the ``optax.MultiStepsState`` that accumulates the
      micro-batches (and holds the inner optimizer's state).
    accumulation: ``k``, the micro-batches per optimizer step now.
    mean_sq: running mean, over this step's micro-batches, of each block's
      mean per-example squared gradient norm.
    mean_norms: running mean of CLARS's ``per_example_norms``.
    trace: moving average of the accumulated batches' ``tr(Σ)`` estimates.
    grad_sq: moving average of their ``‖G‖²`` estimates.
    estimates: how many estimates the averages hold.
    accumulations: the allowed ``k``, ``k_min · growth^j``, smallest first.
    grown_at: the optimizer step from which each allowed ``k`` was used
      (-1: not yet); :func:`replay_schedule` turns it into a fixed schedule.
  """
  multi_steps: optax.MultiStepsState
  accumulation: jax.Array
  mean_sq: Any
  mean_norms: Any
  trace: jax.Array
  grad_sq: jax.Array
  estimates: jax.Array
  accumulations: jax.Array
  grown_at: jax.Array


def _levels(name: str, batch: int, micro_batch: int, growth: int) -> int:
  """``j`` with ``batch = micro_batch · growth^j``, or a ValueError."""
  k, rest = divmod(batch, micro_batch)
  j = round(math.log(k, growth)) if k >= 1 else -1
  if rest or j < 0 or growth ** j != k:
    raise ValueError(f"{name}={batch} must be micro_batch={micro_batch} "
                     f"times a power of growth={growth}")
  return j


def combine_estimates(mean_sq, mean_grads, num_examples: int,
                      blocks: blocks_lib.BlockSpec = None
                      ) -> NoiseScaleEstimate:
  r"""The unbiased noise-scale estimators of a batch of ``num_examples``
  from its mean per-example squared norm per block (``mean_sq``, a block
  tree) and its mean gradient (``mean_grads``, like the params):

  .. math::
    \|G\|^2 \approx \frac{B\|\bar g\|^2 - S}{B - 1}, \qquad
    \operatorname{tr}(\Sigma) \approx \frac{B (S - \|\bar g\|^2)}{B - 1}.

  A micro-batch's :class:`NoiseScaleEstimate` gives its ``S`` per block as
  ``block_trace + block_grad_sq``, so the estimate over ``k`` micro-batches
  of ``b`` examples is this with the mean of their ``S``, the accumulated
  gradient and ``B = k·b``: the estimate on the concatenated batch.
  """
  resolved = blocks_lib.resolve(blocks, mean_grads)
  s = jnp.stack(blocks_lib.from_tree(resolved, mean_sq))
  g_sq = jnp.square(jnp.stack(numerics.block_norms(
      jax.tree.leaves(mean_grads), resolved.groups))).astype(s.dtype)
  b = jnp.asarray(num_examples, s.dtype)
  block_grad_sq = (b * g_sq - s) / (b - 1)
  block_trace = b * (s - g_sq) / (b - 1)
  trace, grad_sq = jnp.sum(block_trace), jnp.sum(block_grad_sq)
  return NoiseScaleEstimate(
      trace / grad_sq, trace, grad_sq,
      blocks_lib.to_tree(resolved, list(block_trace), mean_grads),
      blocks_lib.to_tree(resolved, list(block_grad_sq), mean_grads))


def batch_growth(
    inner: optax.GradientTransformation,
    *,
    micro_batch: int,
    max_batch: int,
    growth: int = 2,
    min_batch: int | None = None,
    decay: float = 0.95,
    noise_scale_multiple: float = 1.0,
    blocks: blocks_lib.BlockSpec = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Accumulates micro-batches, growing the batch with the noise scale.

  Like ``optax.MultiSteps`` (which it wraps): each call takes one
  micro-batch's mean gradient; every ``k``-th call applies ``inner`` to the
  mean of the last ``k`` and returns its update (zeros in between). Unlike
  it, ``k`` follows a measurement. Pass each micro-batch's
  :func:`gradient_noise_scale` estimate as the extra argument
  ``noise_estimate``: the wrapper combines the micro-batches' estimates
  into the *exact* unbiased estimators over all :math:`k b` examples
  (:func:`combine_estimates`), keeps moving averages of their numerator
  and denominator, and after each optimizer step sets

  .. math::
    k \leftarrow \min\bigl(k_\max,\; g k\bigr) \quad\text{if}\quad
    g k b \le c \, B_\text{simple},

  with :math:`g` = ``growth``, :math:`b` = ``micro_batch``, :math:`c` =
  ``noise_scale_multiple`` and :math:`B_\text{simple}` the ratio of the
  averages (once they hold :math:`\lceil 1/(1-\text{decay})\rceil`
  estimates): ``k`` stays a power of ``growth`` times
  ``min_batch / micro_batch``, never decreases, grows by at most one factor
  per step and changes without retracing (it is state, not a Python
  value). The batch then tracks the noise scale, McCandlish et al.'s
  estimate of the critical batch, where doubling the batch stops halving
  the steps.

  The inner optimizer sees whole-batch statistics: ``noise_estimate`` is
  replaced by the combined estimate and CLARS's ``per_example_norms`` (a
  mean over examples) by their mean over the micro-batches, so one
  accumulated step equals one step on the concatenated batch. Without
  ``noise_estimate`` the batch stays at ``min_batch``; with
  ``min_batch == max_batch`` the wrapper is ``optax.MultiSteps`` with a
  fixed ``k``, bitwise.

  Args:
    inner: the optimizer applied once per accumulated batch.
    micro_batch: examples per call (per micro-batch), ``>= 2``; under data
      parallelism the global micro-batch, with the gradients and the
      estimates averaged over the replicas before ``update``.
    max_batch: the largest batch, ``micro_batch`` times a power of
      ``growth``.
    growth: the factor ``k`` grows by, an integer ``>= 2``.
    min_batch: the first batch (default ``micro_batch``), ``micro_batch``
      times a power of ``growth``.
    decay: the moving averages' decay in [0, 1).
    noise_scale_multiple: grow while the batch would stay within this
      multiple of the measured noise scale, ``> 0``.
    blocks: the block specification the estimates were made with.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`BatchGrowthState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda p, b: jnp.mean((b['x'] @ p['w'] - b['y']) ** 2)
    >>> tx = normopt.batch_growth(normopt.sngm(0.1), micro_batch=4,
    ...                           max_batch=16)
    >>> w = {'w': jnp.zeros(2)}
    >>> state = tx.init(w)
    >>> b = {'x': jax.random.normal(jax.random.key(0), (4, 2)),
    ...      'y': jnp.ones(4)}
    >>> _, g, est = normopt.gradient_noise_scale(loss, w, b)
    >>> u, state = tx.update(g, state, w, noise_estimate=est)
    >>> int(state.accumulation)  # micro-batches per step, for now
    1

  References:
    McCandlish, Kaplan, Amodei et al., *An Empirical Model of Large-Batch
    Training*, 2018, https://arxiv.org/abs/1812.06162 (noise scale and
    critical batch); Smith, Kindermans, Ying, Le, *Don't Decay the Learning
    Rate, Increase the Batch Size*, ICLR 2018 (growing the batch).
  """
  check_positive_int("micro_batch", micro_batch)
  if micro_batch < 2:
    raise ValueError(f"micro_batch must be >= 2 (the noise scale needs two "
                     f"examples), got {micro_batch}")
  check_positive_int("growth", growth)
  if growth < 2:
    raise ValueError(f"growth must be an integer >= 2, got {growth} (for a "
                     "fixed batch set min_batch = max_batch)")
  min_batch = micro_batch if min_batch is None else min_batch
  low = _levels("min_batch", min_batch, micro_batch, growth)
  high = _levels("max_batch", max_batch, micro_batch, growth)
  if high < low:
    raise ValueError(f"max_batch={max_batch} is smaller than "
                     f"min_batch={min_batch}")
  check_in_range("decay", decay, 0.0, 1.0, high_inclusive=False)
  check_positive("noise_scale_multiple", noise_scale_multiple)
  ks = [growth ** j for j in range(low, high + 1)]
  warmup = math.ceil(1 / (1 - decay))
  acc_dtype = jnp.result_type(float)  # float64 under x64, else float32

  def multi_steps(k):
    return optax.MultiSteps(inner, every_k_schedule=lambda _: k,
                            accumulator_dtype=acc_dtype)

  def init_fn(params):
    dtype = numerics.norm_dtype(params)
    zeros = blocks_lib.filled(blocks, params, 0.0, dtype)
    return BatchGrowthState(
        multi_steps(ks[0]).init(params), jnp.asarray(ks[0], jnp.int32),
        zeros, zeros, jnp.zeros((), dtype), jnp.zeros((), dtype),
        jnp.zeros((), jnp.int32), jnp.asarray(ks, jnp.int32),
        jnp.asarray([0] + [-1] * (len(ks) - 1), jnp.int32))

  def update_fn(updates, state, params=None, *, noise_estimate=None,
                per_example_norms=None, **extra_args):
    n = state.multi_steps.mini_step
    k = state.accumulation
    emit = n == k - 1

    def running_mean(new, acc):  # MultiSteps' own (Welford) formula
      return jax.tree.map(lambda x, a: a + (x.astype(a.dtype) - a) / (n + 1),
                          new, acc)

    def reset(tree):
      return jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a),
                          tree)

    mean_norms, mean_sq = state.mean_norms, state.mean_sq
    trace, grad_sq, estimates = state.trace, state.grad_sq, state.estimates
    if per_example_norms is not None:
      mean_norms = running_mean(per_example_norms, mean_norms)
      extra_args["per_example_norms"] = mean_norms
    if noise_estimate is not None:
      mean_sq = running_mean(jax.tree.map(
          jnp.add, noise_estimate.block_trace, noise_estimate.block_grad_sq),
          mean_sq)
      mean_grads = running_mean(updates, state.multi_steps.acc_grads)
      estimate = combine_estimates(mean_sq, mean_grads, (n + 1) * micro_batch,
                                   blocks)
      extra_args["noise_estimate"] = estimate
      trace = jnp.where(emit, decay * trace + (1 - decay) * estimate.trace,
                        trace).astype(trace.dtype)
      grad_sq = jnp.where(
          emit, decay * grad_sq + (1 - decay) * estimate.grad_sq,
          grad_sq).astype(grad_sq.dtype)
      estimates = estimates + emit.astype(jnp.int32)
    new_updates, multi_state = multi_steps(k).update(
        updates, state.multi_steps, params, **extra_args)

    # After an optimizer step: grow by one factor if the batch would stay
    # within the multiple of the measured noise scale.
    noise_scale = trace / jnp.where(grad_sq > 0, grad_sq, 1)
    bigger = k * growth
    grow = (emit & (estimates >= warmup) & (grad_sq > 0)
            & (bigger <= ks[-1])
            & (bigger * micro_batch <= noise_scale_multiple * noise_scale))
    k_next = jnp.where(grow, bigger, k).astype(jnp.int32)
    grown_at = jnp.where(grow & (state.accumulations == bigger),
                         multi_state.gradient_step, state.grown_at)
    return new_updates, BatchGrowthState(
        multi_state, k_next, reset(mean_sq), reset(mean_norms), trace,
        grad_sq, estimates, state.accumulations, grown_at.astype(jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def replay_schedule(state: BatchGrowthState):
  """The ``k`` a :func:`batch_growth` run used at each optimizer step, as an
  ``every_k_schedule`` for ``optax.MultiSteps``: a run replayed with it
  takes the same batches at the same steps, without measuring.

  Args:
    state: the :class:`BatchGrowthState` at the end of (or during) a run.

  Returns:
    A function: optimizer step -> micro-batches per step.

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> tx = normopt.batch_growth(optax.sgd(0.1), micro_batch=2, max_batch=8)
    >>> schedule = normopt.replay_schedule(tx.init({'w': jnp.zeros(1)}))
    >>> int(schedule(100))
    1

  References:
    McCandlish, Kaplan, Amodei et al., *An Empirical Model of Large-Batch
    Training*, 2018, https://arxiv.org/abs/1812.06162.
  """
  grown_at, ks = state.grown_at, state.accumulations

  def schedule(step):
    used = (grown_at >= 0) & (grown_at <= step)
    return ks[jnp.sum(used.astype(jnp.int32)) - 1]

  return schedule
