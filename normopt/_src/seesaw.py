"""Seesaw: trade learning-rate decay for batch growth.

Where a decaying schedule would have cut the learning rate by a factor
``α``, Seesaw cuts it by ``α^γ`` (γ = 1/2 for normalized and Adam-like
updates) and multiplies the batch by ``α`` instead, so that the same examples
take fewer, larger steps at the same loss.

Reference: Meterez, Morwani, Wu, Oncescu, Pehlevan & Kakade, *Seesaw:
Accelerating Training by Balancing Learning Rate and Batch Size Scheduling*,
arXiv 2510.14717 (2025).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normopt._src.base import check_at_least, check_positive_int


class SeesawSchedule(NamedTuple):
  """The coupled schedules, both keyed by the optimizer step count.

  Attributes:
    learning_rate: optimizer step -> learning rate (pass it to a method).
    micro_batches: optimizer step -> micro-batches per step (an int32; pass
      it as ``every_k_schedule`` of ``optax.MultiSteps``).
    num_steps: optimizer steps that consume the base schedule's examples.
    boundaries: the optimizer steps at which the batch is multiplied by
      ``factor`` (a phase that the base schedule reaches within one step
      starts at the same step as the next).
  """
  learning_rate: optax.Schedule
  micro_batches: optax.Schedule
  num_steps: int
  boundaries: tuple[int, ...]


def _thresholds(values: np.ndarray, factor: int, phases: int) -> list[int]:
  """Base step at which each phase ``k = 1..phases`` begins: the first step
  after the peak where the base schedule is at or below ``peak / factor^k``
  (``len(values)`` where it never gets there), up to float32 rounding of
  the schedule's values."""
  peak_at = int(np.argmax(values))
  peak = values[peak_at]
  starts = []
  for k in range(1, phases + 1):
    below = np.nonzero(values[peak_at:]
                       <= peak / float(factor) ** k * (1 + 1e-6))[0]
    starts.append(peak_at + int(below[0]) if below.size else len(values))
  return starts


def seesaw_schedule(
    learning_rate: optax.Schedule,
    total_steps: int,
    *,
    max_micro_batches: int,
    micro_batches: int = 1,
    factor: int = 2,
    batch_exponent: float = 0.5,
) -> SeesawSchedule:
  r"""Coupled learning-rate and batch schedules (Seesaw).

  ``learning_rate`` is a base schedule :math:`\eta(s)` over ``total_steps``
  steps of a base batch (``micro_batches`` micro-batches). Phase :math:`k`
  starts where the base schedule first falls to :math:`\eta_\max
  \alpha^{-k}` after its peak (:math:`\alpha` = ``factor``); in phase
  :math:`k` a step takes :math:`\alpha^k` times the base batch, so it covers
  :math:`\alpha^k` base steps, and its learning rate is

  .. math::
    \eta_k(s) = \eta(s)\,\alpha^{k\gamma},

  :math:`s` being the base step the optimizer step starts at and
  :math:`\gamma` = ``batch_exponent``. So :math:`\eta / B^\gamma` follows
  the base schedule's :math:`\eta / B_0^\gamma`: γ = 1/2 keeps the noise of
  normalized and Adam-like updates (Seesaw's rule: where the base halves the
  rate, Seesaw multiplies it by :math:`1/\sqrt 2` and doubles the batch);
  γ = 1 is SGD's linear rule. Growth stops at ``max_micro_batches``; after
  that the rate follows the base schedule's decay (times the last phase's
  :math:`\alpha^{k\gamma}`). Warmup before the peak runs at the base batch.

  The phase boundaries are computed once, on the host, from the base
  schedule's values; the returned schedules are pure ``jnp`` functions of
  the step count, so they run under ``jit`` and never retrace. With
  ``max_micro_batches == micro_batches`` (or a base schedule that never
  decays by ``factor``) they are the base schedule and a fixed ``k``: wrapped
  in ``optax.MultiSteps`` they equal ``MultiSteps`` with that ``k``.

  Args:
    learning_rate: the base schedule, step -> learning rate (any optax
      schedule, warmup included), at the base batch.
    total_steps: the base schedule's length in base steps (examples /
      base batch).
    max_micro_batches: the largest batch, in micro-batches: ``micro_batches``
      times a power of ``factor``.
    micro_batches: the base batch, in micro-batches.
    factor: the batch multiplier per phase, an integer ``>= 2``.
    batch_exponent: γ above; 0.5 for normalized methods, Adam-like ones and
      Muon, 1.0 for SGD.

  Returns:
    A :class:`SeesawSchedule`.

  Example:
    >>> import optax, normopt
    >>> base = optax.cosine_decay_schedule(0.1, 1000)
    >>> s = normopt.seesaw_schedule(base, 1000, max_micro_batches=8)
    >>> tx = optax.MultiSteps(normopt.sngm(s.learning_rate),
    ...                       every_k_schedule=s.micro_batches)
    >>> s.boundaries, s.num_steps
    ((500, 584, 610), 639)

  References:
    Meterez, Morwani, Wu, Oncescu, Pehlevan & Kakade, *Seesaw: Accelerating
    Training by Balancing Learning Rate and Batch Size Scheduling*, arXiv
    2510.14717 (2025).
  """
  check_positive_int("total_steps", total_steps)
  check_positive_int("micro_batches", micro_batches)
  check_positive_int("max_micro_batches", max_micro_batches)
  check_at_least("factor", factor, 2)
  if int(factor) != factor:
    raise ValueError(f"factor must be an integer >= 2, got {factor}")
  factor = int(factor)
  check_at_least("batch_exponent", batch_exponent, 0.0)
  phases = 0
  while micro_batches * factor ** (phases + 1) <= max_micro_batches:
    phases += 1
  if micro_batches * factor ** phases != max_micro_batches:
    raise ValueError(
        f"max_micro_batches ({max_micro_batches}) must be micro_batches "
        f"({micro_batches}) times a power of factor ({factor})")
  with jax.ensure_compile_time_eval():  # concrete even inside a trace
    values = np.asarray(jax.device_get(jax.vmap(learning_rate)(
        jnp.arange(total_steps))), np.float64)
  if not np.all(np.isfinite(values)) or np.any(values < 0):
    raise ValueError("learning_rate must be finite and >= 0 over "
                     "total_steps")
  starts = [*_thresholds(values, factor, phases), total_steps]
  # Optimizer steps per phase: phase k covers base steps from where the
  # previous phase stopped up to the next threshold, factor^k per step.
  first_step, first_base = [0], [0]
  for k in range(phases):
    taken = max(0, -(-(starts[k] - first_base[-1]) // factor ** k))
    first_step.append(first_step[-1] + taken)
    first_base.append(first_base[-1] + taken * factor ** k)
  last = max(0, -(-(total_steps - first_base[-1]) // factor ** phases))
  num_steps = first_step[-1] + last

  step_at = jnp.asarray(first_step, jnp.int32)
  base_at = jnp.asarray(first_base, jnp.int32)
  widths = jnp.asarray([factor ** k for k in range(phases + 1)], jnp.int32)
  boosts = jnp.asarray([float(factor) ** (k * batch_exponent)
                        for k in range(phases + 1)], jnp.float32)

  def phase(count):
    count = jnp.asarray(count, jnp.int32)
    return jnp.sum(count >= step_at[1:]).astype(jnp.int32), count

  def lr(count):
    k, count = phase(count)
    base_step = base_at[k] + (count - step_at[k]) * widths[k]
    return learning_rate(base_step) * boosts[k]

  def k_of(count):
    k, _ = phase(count)
    return micro_batches * widths[k]

  return SeesawSchedule(lr, k_of, int(num_steps),
                        tuple(int(n) for n in first_step[1:]))
