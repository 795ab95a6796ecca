"""Shared types and argument checks, in one vocabulary.

Every check raises ``ValueError`` naming the argument. Schedules (callables
of the step count) are checked at step 0 only: a schedule that turns
negative later, like a traced value (``optax.inject_hyperparams`` under
``jit``), cannot be checked when the transformation is built.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

ScalarOrSchedule = optax.ScalarOrSchedule


def _concrete_float(value) -> float | None:
  """``value`` as a Python float, or None for traced values; a schedule is
  checked at step 0 (where it returns a concrete number). Later steps
  under ``jit`` are traced and cannot be checked."""
  if callable(value):
    try:
      value = value(0)
    except Exception:  # a schedule that needs a traced or array count
      return None
  if isinstance(value, jax.core.Tracer):
    return None
  array = np.asarray(value)
  if array.shape != ():
    raise ValueError(f"expected a scalar hyperparameter, got shape {array.shape}")
  return float(array)


def check_in_range(name: str, value, low: float, high: float, *,
                   high_inclusive: bool) -> None:
  """Raises unless ``low <= value < high`` (``<= high`` if ``high_inclusive``)."""
  v = _concrete_float(value)
  if v is None:
    return
  ok = low <= v <= high if high_inclusive else low <= v < high
  if not ok:
    bracket = "]" if high_inclusive else ")"
    raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {v}")


def check_non_negative(name: str, value) -> None:
  """Raises unless ``value`` is finite and ``>= 0``."""
  v = _concrete_float(value)
  if v is not None and not (math.isfinite(v) and v >= 0):
    raise ValueError(f"{name} must be finite and >= 0, got {v}")


def check_positive(name: str, value) -> None:
  """Raises unless ``value`` is finite and ``> 0``."""
  v = _concrete_float(value)
  if v is not None and not (math.isfinite(v) and v > 0):
    raise ValueError(f"{name} must be finite and > 0, got {v}")


def check_at_least(name: str, value, low: float) -> None:
  """Raises unless ``value`` is finite and ``>= low``."""
  v = _concrete_float(value)
  if v is not None and not (math.isfinite(v) and v >= low):
    raise ValueError(f"{name} must be finite and >= {low}, got {v}")


def check_positive_int(name: str, value) -> None:
  """Raises unless ``value`` is an integer ``>= 1`` (a traced value, as
  under ``inject_hyperparams``, is not checked)."""
  v = _concrete_float(value)
  if v is not None and (not math.isfinite(v) or int(v) != v or v < 1):
    raise ValueError(f"{name} must be a positive integer, got {value}")


def check_choice(name: str, value, choices) -> None:
  """Raises unless ``value`` is one of ``choices`` (a ``Literal``'s values)."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                     f"got {value!r}")


def find_states(tree, types) -> list:
  """Every state of the given type(s) inside an optimizer state, in order
  (nested chains, ``optax.masked``, ``MultiSteps``, ``inject_hyperparams``)."""
  found = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, types))
  return [s for s in found if isinstance(s, types)]


def find_one_state(tree, state_type, caller: str, link: str):
  """The only ``state_type`` inside ``tree``; a ``ValueError`` naming
  ``caller`` and the ``link`` that makes that state otherwise."""
  found = find_states(tree, state_type)
  if len(found) != 1:
    raise ValueError(
        f"{caller} needs an optimizer state holding exactly one "
        f"{state_type.__name__} (from {link}); found {len(found)}")
  return found[0]


def evaluate(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
  """The value of a constant or a schedule (a callable of the step count)."""
  x = jnp.asarray(value(count) if callable(value) else value)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(float)
