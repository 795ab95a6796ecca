"""Implicit gradient transport: evaluating gradients at an extrapolated point."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._src import numerics
from normopt._src.base import (
    ScalarOrSchedule,
    check_in_range,
    evaluate,
    find_one_state,
)


class IgtExtrapolateState(NamedTuple):
  """State of :func:`igt_extrapolate`.

  Attributes:
    count: number of updates so far.
    true_params: the true iterate ``w_t``; the params hold
      ``x_t = w_t + c_t (w_t - w_{t-1})``.
  """
  count: jax.Array
  true_params: Any


def igt_extrapolate(beta: ScalarOrSchedule) -> optax.GradientTransformation:
  r"""Implicit gradient transport (IGT): keep the params at the look-ahead.

  NIGT (Alg. 1) evaluates gradients at
  :math:`x_t = w_t + c_t (w_t - w_{t-1})` with :math:`c_t = \beta_t/(1-\beta_t)`.
  This transformation makes the user's params *be* :math:`x_t`: it receives
  the true step :math:`\delta_t = w_{t+1} - w_t` (what the earlier links of
  the chain produced, sign included), keeps the true iterate in its state
  (one buffer) and outputs the move of the params:

  .. math::
    w_{t+1} = w_t + \delta_t, \qquad
    x_{t+1} - x_t = (w_{t+1} + c_{t+1}\,\delta_t) - x_t
    \;\big(= (1 + c_{t+1})\,\delta_t - c_t\,\delta_{t-1}\big).

  (Keeping :math:`w_t` rather than :math:`\delta_{t-1}` lets XLA update every
  buffer in place: the state update reads its own old value, like a momentum
  buffer. Keeping :math:`\delta_{t-1}` made XLA on CPU copy the donated
  buffer every step, ~3x slower.) Put it *last* in a chain, after the
  learning rate; it needs ``params``. :func:`igt_true_params` returns
  :math:`w_t` for evaluation and for saving the final model.

  Args:
    beta: the momentum coefficient β in [0, 1), or a schedule of the step
      count (β at count ``k`` is used for the point ``x_{k+1}``).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> tx = optax.chain(optax.sgd(0.1), normopt.igt_extrapolate(0.5))
    >>> x = jnp.ones(2)
    >>> s = tx.init(x)
    >>> u, s = tx.update(jnp.ones(2), s, x)
    >>> x = optax.apply_updates(x, u)  # w = 0.9, x = w + c (w - 1), c = 1
    >>> bool(jnp.allclose(x, 0.8)), bool(jnp.allclose(
    ...     normopt.igt_true_params(x, s), 0.9))
    (True, True)

  References:
    Cutkosky & Mehta, *Momentum Improves Normalized SGD*, 2020, Alg. 1-2;
    Arnold, Manzagol, Babanezhad, Mitliagkas, Le Roux, *Reducing the variance
    in online optimization by transporting past gradients*, 2019.
  """
  check_in_range("beta", beta, 0.0, 1.0, high_inclusive=False)

  def init_fn(params):
    return IgtExtrapolateState(count=jnp.zeros((), jnp.int32),
                               true_params=init_true_params(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("igt_extrapolate needs the params (x_t): call "
                       "update(updates, state, params)")
    numerics.check_float_leaves(updates)
    count = optax.safe_increment(state.count)
    b = evaluate(beta, count)
    c_next = b / (1.0 - b)
    true_params = numerics.axpby(1.0, state.true_params, 1.0, updates)
    out = extrapolated_step(true_params, updates, params, c_next)
    return out, IgtExtrapolateState(count, true_params)

  return optax.GradientTransformation(init_fn, update_fn)


def init_true_params(params):
  """A copy of ``params`` for the true iterate; abstract leaves
  (``jax.ShapeDtypeStruct``) stay abstract, as ``jax.eval_shape`` gives."""
  return jax.tree.map(
      lambda p: p if isinstance(p, jax.ShapeDtypeStruct) else jnp.copy(p),
      params)


def extrapolated_step(true_params, step, params, c):
  """The update taking ``params`` (``x_t``) to ``w_{t+1} + c·step``, computed
  in float32 or wider and cast to each step leaf's dtype."""
  def move(w, d, x):
    dtype = numerics.accumulation_dtype(x.dtype)
    target = w.astype(dtype) + c.astype(dtype) * d.astype(dtype)
    return (target - x.astype(dtype)).astype(d.dtype)
  return jax.tree.map(move, true_params, step, params)


def igt_true_params(params, opt_state):
  r"""The true iterate :math:`w_t` of an IGT chain (kept in its state).

  With :func:`igt_extrapolate` (and so :func:`normopt.nigt`) the params that
  the user holds are the extrapolated point :math:`x_t` where gradients are
  taken. Evaluate, report and save :math:`w_t` instead.

  Args:
    params: the params the optimizer has been updating (:math:`x_t`).
    opt_state: the state of a chain containing one ``igt_extrapolate`` (or
      that ``IgtExtrapolateState`` itself); nested states are searched.

  Returns:
    A tree like ``params`` holding :math:`w_t`, each leaf in its dtype.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.nigt(0.1)
    >>> x = jnp.ones(2)
    >>> s = tx.init(x)
    >>> bool((normopt.igt_true_params(x, s) == x).all())
    True

  References:
    Cutkosky & Mehta, *Momentum Improves Normalized SGD*, 2020, Alg. 1.
  """
  state = find_one_state(opt_state, IgtExtrapolateState, "igt_true_params",
                         "normopt.igt_extrapolate")
  return jax.tree.map(lambda x, w: w.astype(x.dtype), params,
                      state.true_params)
