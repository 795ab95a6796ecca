"""Epoch-keyed schedules and increasing batch size (mini-batch QHM paper).

Every schedule here is a pure function of the epoch ``m`` (an int or a traced
integer array) and is safe under ``jit``. :func:`step_to_epoch` turns optax's
step count into the epoch when the batch size changes with the epoch, so
:func:`per_step` can feed any of them to ``learning_rate``, ``beta`` or
``nu`` of a normopt method; :func:`accumulation_steps` drives
``optax.MultiSteps`` so that a fixed micro-batch realizes the growing batch
without recompiling.

Reference: Imaizumi & Iiduka, *Both Asymptotic and Non-Asymptotic
Convergence of Quasi-Hyperbolic Momentum using Increasing Batch Size*, ACML
2025, Sec. 2.3-2.5, eq. (1)-(12).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from normopt._src.base import (
    check_at_least,
    check_in_range,
    check_non_negative,
    check_positive_int,
)

EpochSchedule = Callable[[jax.Array], jax.Array]


def _epoch(m) -> jax.Array:
  return jnp.asarray(m).astype(jnp.result_type(float))


# --- batch size --------------------------------------------------------------

def constant_batch(batch_size: int) -> EpochSchedule:
  """[Constant BS] eq. (1): ``b_m = b``."""
  check_positive_int("batch_size", batch_size)
  return lambda m: jnp.full(jnp.shape(m), batch_size, jnp.int32)


def exponential_batch(initial: int, factor: float, interval: int,
                      max_batch: int | None = None) -> EpochSchedule:
  """[Exponential BS] eq. (2): ``b_m = min(b_0 δ^⌊m/E⌋, max_batch)``.

  Without ``max_batch`` the size is capped at 2^30 so it stays an int32.

  Example:
    >>> from normopt import schedules
    >>> b = schedules.exponential_batch(8, 2, interval=30, max_batch=64)
    >>> [int(b(m)) for m in (0, 29, 30, 60, 300)]
    [8, 8, 16, 32, 64]
  """
  check_positive_int("initial", initial)
  check_positive_int("interval", interval)
  check_at_least("factor", factor, 1.0)
  if max_batch is not None:
    check_positive_int("max_batch", max_batch)
  cap = 2 ** 30 if max_batch is None else min(max_batch, 2 ** 30)

  def schedule(m):
    stage = jnp.asarray(m) // interval
    b = initial * jnp.asarray(factor, jnp.result_type(float)) ** stage
    return jnp.round(jnp.minimum(b, cap)).astype(jnp.int32)  # inf -> cap
  return schedule


# --- learning rate ------------------------------------------------------------

def constant(value: float) -> EpochSchedule:
  """[Constant LR] / [Constant Beta] / [Constant Gamma]: eq. (3), (8), (11)."""
  return lambda m: jnp.full(jnp.shape(m), value, jnp.result_type(float))


def sqrt_decay(init_value: float) -> EpochSchedule:
  """[Sqrt-Decaying LR] eq. (4): ``α_max / √(m+1)``."""
  check_non_negative("init_value", init_value)
  return lambda m: init_value / jnp.sqrt(_epoch(m) + 1)


def inverse_decay(init_value: float) -> EpochSchedule:
  """[Decaying LR] eq. (5): ``α_max / (m+1)``."""
  check_non_negative("init_value", init_value)
  return lambda m: init_value / (_epoch(m) + 1)


def cosine(init_value: float, num_epochs: int,
           end_value: float = 0.0) -> EpochSchedule:
  """[Cosine-annealing LR] eq. (6):
  ``α_min + (α_max - α_min)(1 + cos(mπ/(M-1)))/2``; ``α_max`` if M = 1.

  Epochs past ``M - 1`` stay at ``α_min``.
  """
  check_non_negative("init_value", init_value)
  check_positive_int("num_epochs", num_epochs)
  if num_epochs == 1:
    return constant(init_value)

  def schedule(m):
    m = jnp.minimum(_epoch(m), num_epochs - 1)
    return end_value + (init_value - end_value) / 2 * (
        1 + jnp.cos(m * jnp.pi / (num_epochs - 1)))
  return schedule


def polynomial(init_value: float, num_epochs: int, power: float = 2.0,
               end_value: float = 0.0) -> EpochSchedule:
  """[Polynomial Decay LR] eq. (7): ``α_min + (α_max - α_min)(1 - m/M)^p``.

  Epochs past ``M`` stay at ``α_min``.
  """
  check_non_negative("init_value", init_value)
  check_positive_int("num_epochs", num_epochs)
  if not power > 0:
    raise ValueError(f"power must be > 0, got {power}")

  def schedule(m):
    frac = jnp.clip(1 - _epoch(m) / num_epochs, 0, 1)
    return end_value + (init_value - end_value) * frac ** power
  return schedule


# --- momentum weights ---------------------------------------------------------

def step_decay(init_value: float, factor: float,
               interval: int) -> EpochSchedule:
  """[Step Decay Beta / Gamma] eq. (9), (12): ``v ζ^⌊m/E⌋``, ``ζ ∈ (0, 1)``."""
  check_in_range("factor", factor, 0.0, 1.0, high_inclusive=True)
  check_positive_int("interval", interval)
  return lambda m: init_value * jnp.asarray(factor, jnp.result_type(float)) ** (
      jnp.asarray(m) // interval)


def increasing_beta(beta_min: float) -> EpochSchedule:
  """[Increasing Beta] eq. (10): ``1 - (1 - β_min)/(m+1)^{3/4}``."""
  check_in_range("beta_min", beta_min, 0.0, 1.0, high_inclusive=False)
  return lambda m: 1 - (1 - beta_min) / (_epoch(m) + 1) ** 0.75


# --- from optimizer steps to epochs --------------------------------------------

def step_to_epoch(dataset_size: int, batch_size: EpochSchedule,
                  num_epochs: int) -> Callable[[jax.Array], jax.Array]:
  """The map from optimizer steps to epochs when the batch grows per epoch.

  Epoch ``m`` takes ``T_m = ⌈N / b_m⌉`` steps (paper Sec. 2.3). The
  cumulative step counts of the first ``num_epochs`` epochs are tabulated
  once in Python; the returned function is a ``searchsorted`` on that
  constant table (jit-safe, no callbacks), continued past the table with the
  last epoch's ``T``.

  Args:
    dataset_size: ``N``, examples per epoch.
    batch_size: an epoch schedule of batch sizes (e.g.
      :func:`exponential_batch`).
    num_epochs: epochs to tabulate (``M``).

  Returns:
    A function of the step count (int or traced array) -> epoch (int32).

  Example:
    >>> from normopt import schedules
    >>> epoch_of = schedules.step_to_epoch(
    ...     100, schedules.exponential_batch(10, 2, interval=1), num_epochs=3)
    >>> [int(epoch_of(k)) for k in (0, 9, 10, 14, 15, 17, 100)]
    [0, 0, 1, 1, 2, 2, 30]
  """
  check_positive_int("dataset_size", dataset_size)
  check_positive_int("num_epochs", num_epochs)
  sizes = [int(batch_size(m)) for m in range(num_epochs)]
  for m, b in enumerate(sizes):
    if b < 1:
      raise ValueError(f"batch size at epoch {m} is {b}; it must be >= 1")
  steps = np.array([-(-dataset_size // b) for b in sizes], np.int64)
  starts = np.concatenate([[0], np.cumsum(steps)[:-1]])
  last_start, last_steps = int(starts[-1]), int(steps[-1])

  def epoch_of(count):
    count = jnp.asarray(count)
    inside = jnp.searchsorted(jnp.asarray(starts, count.dtype), count,
                              side="right") - 1
    beyond = num_epochs - 1 + (count - last_start) // last_steps
    return jnp.where(count >= last_start, beyond, inside).astype(jnp.int32)
  return epoch_of


def per_step(schedule: EpochSchedule,
             epoch_of: Callable[[jax.Array], jax.Array]
             ) -> Callable[[jax.Array], jax.Array]:
  """An optax step schedule from an epoch schedule: ``schedule(epoch_of(k))``.

  Use it for ``learning_rate``, ``beta`` or ``nu`` of any normopt method.

  Example:
    >>> import normopt
    >>> from normopt import schedules
    >>> epoch_of = schedules.step_to_epoch(
    ...     1000, schedules.constant_batch(100), num_epochs=5)
    >>> lr = schedules.per_step(schedules.sqrt_decay(0.1), epoch_of)
    >>> tx = normopt.qhm(lr, beta=schedules.per_step(
    ...     schedules.step_decay(0.9, 0.5, 2), epoch_of))
  """
  return lambda count: schedule(epoch_of(count))


def accumulation_steps(batch_size: EpochSchedule, micro_batch: int,
                       epoch_of: Callable[[jax.Array], jax.Array]
                       ) -> Callable[[jax.Array], jax.Array]:
  """``every_k_schedule`` for ``optax.MultiSteps``: ``k = b_m / micro_batch``.

  ``optax.MultiSteps(tx, every_k_schedule=accumulation_steps(...))`` averages
  ``k`` micro-batch gradients and applies ``tx`` once: one step on the batch
  ``b_m``. ``k`` is a traced value, so a growing batch never recompiles.
  Every tabulated batch size must be a multiple of ``micro_batch``.

  Args:
    batch_size: the epoch schedule of batch sizes (cap it with
      ``exponential_batch(..., max_batch=...)``).
    micro_batch: examples per forward/backward pass.
    epoch_of: from :func:`step_to_epoch` (MultiSteps passes its count of
      applied steps).

  Returns:
    A function of the optimizer step count -> micro-batches per step.
  """
  check_positive_int("micro_batch", micro_batch)
  return lambda count: batch_size(epoch_of(count)) // micro_batch


def check_divisible(batch_size: EpochSchedule, micro_batch: int,
                    num_epochs: int) -> None:
  """Raises ``ValueError`` if some ``b_m`` is not a multiple of the micro-batch."""
  for m in range(num_epochs):
    b = int(batch_size(m))
    if b % micro_batch:
      raise ValueError(f"batch size {b} at epoch {m} is not a multiple of the "
                       f"micro-batch {micro_batch}")
