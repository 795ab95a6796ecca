"""Validation and evaluation of hyperparameters that may be schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

Scalar = Union[float, int, jax.Array, np.ndarray]
ScalarOrSchedule = Union[Scalar, Callable[[jax.Array], Scalar]]


def _concrete_float(value) -> float | None:
  """``value`` as a Python float, or None for schedules and traced values."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  array = np.asarray(value)
  if array.shape != ():
    raise ValueError(f"expected a scalar hyperparameter, got shape {array.shape}")
  return float(array)


def check_in_range(name: str, value, low: float, high: float,
                   high_inclusive: bool) -> None:
  """Raises ``ValueError`` naming ``name`` unless ``low <= value <(=) high``.

  Schedules and traced values (``optax.inject_hyperparams`` under ``jit``)
  cannot be checked here and are accepted.
  """
  v = _concrete_float(value)
  if v is None:
    return
  ok = low <= v <= high if high_inclusive else low <= v < high
  if not ok:
    bracket = "]" if high_inclusive else ")"
    raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {v}")


def check_non_negative(name: str, value) -> None:
  """Raises ``ValueError`` naming ``name`` unless it is finite and >= 0."""
  v = _concrete_float(value)
  if v is not None and not (math.isfinite(v) and v >= 0):
    raise ValueError(f"{name} must be finite and >= 0, got {v}")


def evaluate(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
  """The value of a constant or a schedule (a callable of the step count)."""
  x = jnp.asarray(value(count) if callable(value) else value)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(float)
