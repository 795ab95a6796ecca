"""Implicit gradient transport: evaluating gradients at an extrapolated point."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._src import numerics
from normopt._src.hyperparams import ScalarOrSchedule, check_in_range, evaluate


class IgtExtrapolateState(NamedTuple):
  """State of :func:`igt_extrapolate`.

  Attributes:
    count: number of updates so far.
    previous_step: the last true step ``δ_{t-1} = w_t - w_{t-1}``.
    coefficient: ``c_t = β/(1-β)`` used for the current point, so that the
      params hold ``x_t = w_t + c_t δ_{t-1}``.
  """
  count: jax.Array
  previous_step: Any
  coefficient: jax.Array


def _coefficient(beta: ScalarOrSchedule, count) -> jax.Array:
  b = evaluate(beta, count)
  return b / (1.0 - b)


def igt_extrapolate(beta: ScalarOrSchedule) -> optax.GradientTransformation:
  r"""Implicit gradient transport (IGT): keep the params at the look-ahead.

  NIGT (Alg. 1) evaluates gradients at
  :math:`x_t = w_t + c_t (w_t - w_{t-1})` with :math:`c_t = \beta_t/(1-\beta_t)`.
  This transformation makes the user's params *be* :math:`x_t`: it receives
  the true step :math:`\delta_t = w_{t+1} - w_t` (what the earlier links of
  the chain produced, sign included) and outputs

  .. math:: x_{t+1} - x_t = (1 + c_{t+1})\,\delta_t - c_t\,\delta_{t-1},

  keeping :math:`\delta_{t-1}` (one buffer) and :math:`c_t` in its state. Put
  it *last* in a chain, after the learning rate. Use
  :func:`igt_true_params` to get :math:`w_t` back for evaluation and for
  saving the final model.

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
    >>> u, s = tx.update(jnp.ones(2), s)
    >>> u  # (1 + c) * (-0.1) with c = 1
    Array([-0.2, -0.2], dtype=float32)

  References:
    Cutkosky & Mehta, *Momentum Improves Normalized SGD*, 2020, Alg. 1-2;
    Arnold, Manzagol, Babanezhad, Mitliagkas, Le Roux, *Reducing the variance
    in online optimization by transporting past gradients*, 2019.
  """
  check_in_range("beta", beta, 0.0, 1.0, high_inclusive=False)

  def init_fn(params):
    return IgtExtrapolateState(
        count=jnp.zeros((), jnp.int32),
        previous_step=jax.tree.map(jnp.zeros_like, params),
        coefficient=jnp.zeros((), numerics.norm_dtype(params)))

  def update_fn(updates, state, params=None):
    del params
    numerics.check_float_leaves(jax.tree.leaves(updates))
    count = optax.safe_increment(state.count)
    c_next = _coefficient(beta, count).astype(state.coefficient.dtype)
    out = numerics.axpby(1 + c_next, updates, -state.coefficient,
                         state.previous_step)
    previous = jax.tree.map(lambda s, p: s.astype(p.dtype), updates,
                            state.previous_step)
    return out, IgtExtrapolateState(count, previous, c_next)

  return optax.GradientTransformation(init_fn, update_fn)


def _find_igt_state(opt_state) -> IgtExtrapolateState:
  found = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda s: isinstance(s, IgtExtrapolateState))
           if isinstance(s, IgtExtrapolateState)]
  if len(found) != 1:
    raise ValueError(
        "igt_true_params needs an optimizer state holding exactly one "
        f"IgtExtrapolateState (from normopt.igt_extrapolate); found {len(found)}")
  return found[0]


def igt_true_params(params, opt_state):
  r"""The true iterate :math:`w_t = x_t - c_t \delta_{t-1}` of an IGT chain.

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
  state = _find_igt_state(opt_state)
  return numerics.axpby(1.0, params, -state.coefficient, state.previous_step)
