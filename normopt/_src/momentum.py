"""Momentum buffers: heavy ball (Polyak / Nesterov) and quasi-hyperbolic."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import optax

from normopt._src import numerics
from normopt._src.base import (
    ScalarOrSchedule,
    check_choice,
    check_in_range,
    evaluate,
)


class HeavyBallState(NamedTuple):
  """State of :func:`heavy_ball`: the step count and the momentum buffer."""
  count: jax.Array
  momentum: Any


class QhCombineState(NamedTuple):
  """State of :func:`qh_combine`: the step count and the EMA buffer ``d``."""
  count: jax.Array
  ema: Any


def _zeros_like(tree, dtype=None):
  return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)


MomentumInit = Literal["zero", "first"]


def heavy_ball(
    beta: ScalarOrSchedule,
    *,
    nesterov: bool = False,
    ema: bool = False,
    init: MomentumInit = "zero",
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""Heavy-ball momentum: ``u ← β u + c·g``.

  .. math::
    u_{t+1} = \beta_t u_t + c_t g_t, \qquad
    c_t = 1 \text{ or } (1-\beta_t) \text{ if ``ema``},

  and the output is :math:`u_{t+1}`, or the Nesterov form
  :math:`c_t g_t + \beta_t u_{t+1}`. With ``init="first"`` the first step sets
  :math:`u_1 = g_1` (NIGT Alg. 1, line 1) instead of :math:`c_1 g_1`.

  Args:
    beta: momentum coefficient in [0, 1), or a schedule of the step count.
    nesterov: output the Nesterov look-ahead instead of the buffer.
    ema: weight the incoming update by ``1 - β`` (an exponential moving
      average, as in normalized SGD with momentum).
    init: ``"zero"`` (``u_0 = 0``) or ``"first"`` (``u_1 = g_1``).
    mu_dtype: the dtype the buffer is kept in (default: each leaf's own).
      The output is in the updates' dtype.

  Returns:
    An ``optax.GradientTransformation`` whose state holds the buffer in
    ``mu_dtype`` or each leaf's dtype (arithmetic is done in float32 or
    wider).

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.heavy_ball(0.5)
    >>> g = jnp.ones(2)
    >>> s = tx.init(g)
    >>> u, s = tx.update(g, s)
    >>> u, s = tx.update(g, s)
    >>> u
    Array([1.5, 1.5], dtype=float32)

  References:
    Polyak, *Some methods of speeding up the convergence of iteration
    methods*, 1964; SNGM paper eq. (7); NIGT paper eq. (2) and Alg. 1.
  """
  check_in_range("beta", beta, 0.0, 1.0, high_inclusive=False)
  check_choice("init", init, get_args(MomentumInit))

  def init_fn(params):
    return HeavyBallState(count=jnp.zeros((), jnp.int32),
                          momentum=_zeros_like(params, mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    numerics.check_float_leaves(updates)
    b = evaluate(beta, state.count)
    c = 1.0 - b if ema else jnp.ones_like(b)
    if init == "first":
      first = state.count == 0
      a, c_in = jnp.where(first, 0.0, b), jnp.where(first, 1.0, c)
    else:
      a, c_in = b, c
    momentum = numerics.axpby(a, state.momentum, c_in, updates)
    out = numerics.axpby(b, momentum, c_in, updates) if nesterov else momentum
    if mu_dtype is not None:
      out = jax.tree.map(lambda o, g: o.astype(g.dtype), out, updates)
    return out, HeavyBallState(optax.safe_increment(state.count), momentum)

  return optax.GradientTransformation(init_fn, update_fn)


def qh_combine(beta: ScalarOrSchedule, *,
               nu: ScalarOrSchedule) -> optax.GradientTransformation:
  r"""Quasi-hyperbolic momentum: a ν-weighted mix of gradient and its EMA.

  .. math::
    d_k = \beta_k d_{k-1} + (1-\beta_k) g_k, \qquad
    m_k = (1-\nu_k) g_k + \nu_k d_k, \qquad d_{-1} = 0 .

  ν = 0 is SGD, ν = 1 is normalized heavy ball (NSHB; "normalized" refers to
  the ``1-β`` factor, not to a gradient norm), ν = β is Nesterov (SNAG).

  Args:
    beta: EMA coefficient in [0, 1), or a schedule of the step count.
    nu: weight of the EMA in [0, 1] (``γ`` in the QHM paper), or a schedule.

  Returns:
    An ``optax.GradientTransformation``; the state keeps ``d`` in each leaf's
    dtype.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.qh_combine(beta=0.5, nu=0.5)
    >>> g = jnp.ones(2)
    >>> u, _ = tx.update(g, tx.init(g))
    >>> u
    Array([0.75, 0.75], dtype=float32)

  References:
    Ma & Yarats, *Quasi-hyperbolic momentum and Adam for deep learning*,
    2019; Imaizumi & Iiduka, *Both Asymptotic and Non-Asymptotic Convergence
    of Quasi-Hyperbolic Momentum using Increasing Batch Size*, ACML 2025
    (mini-batch QHM), Alg. 1.
  """
  check_in_range("beta", beta, 0.0, 1.0, high_inclusive=False)
  check_in_range("nu", nu, 0.0, 1.0, high_inclusive=True)

  nu_is_one = isinstance(nu, (int, float)) and nu == 1

  def init_fn(params):
    return QhCombineState(count=jnp.zeros((), jnp.int32),
                          ema=_zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    numerics.check_float_leaves(updates)
    b = evaluate(beta, state.count)
    v = evaluate(nu, state.count)
    d = numerics.axpby(b, state.ema, 1.0 - b, updates)
    # NSHB (nu = 1): m = d, without re-reading g (one memory stream less).
    out = d if nu_is_one else numerics.axpby(v, d, 1.0 - v, updates)
    return out, QhCombineState(optax.safe_increment(state.count), d)

  return optax.GradientTransformation(init_fn, update_fn)
