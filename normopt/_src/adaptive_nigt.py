"""Adaptive NIGT (Cutkosky & Mehta, Alg. 2): a stateful method in its own room.

Its step size and momentum follow a running variance estimate ``G_t``, so
they are state, not schedules of the step count; the update is written out
here with normopt's numerics (EMA momentum, global normalization, IGT
extrapolation) instead of a chain rebuilt at every step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._src import blocks as blocks_lib
from normopt._src import numerics
from normopt._src.base import (
    ScalarOrSchedule,
    check_non_negative,
    check_positive,
    evaluate,
)
from normopt._src.extrapolate import (
    IgtExtrapolateState,
    extrapolated_step,
    init_true_params,
)


class AdaptiveNigtState(NamedTuple):
  """State of :func:`adaptive_nigt`.

  Attributes:
    count: number of updates so far (``t - 1``).
    previous_g: ``G_{t-1}``.
    current_g: ``G_t``.
    momentum: the EMA ``m_{t-1}`` of the gradients, in each leaf's dtype.
    igt: the true iterate ``w_t`` (read it with :func:`igt_true_params`).
  """
  count: jax.Array
  previous_g: jax.Array
  current_g: jax.Array
  momentum: optax.Updates
  igt: IgtExtrapolateState


def adaptive_nigt(learning_rate: ScalarOrSchedule = 1.0, *,
                  gradient_bound: float = 1.0, weight_decay: float = 0.0,
                  axis_name: str | None = None,
                  ) -> optax.GradientTransformationExtraArgs:
  r"""Adaptive normalized SGD with momentum and IGT (NIGT Alg. 2).

  Step size and momentum adapt to the observed gradient variance, estimated
  from a *second, independent* gradient at the same point:

  .. math::
    \eta_t = \frac{C}{(G_t^2 (t+1)^3)^{1/7}},\quad
    \alpha_t = \frac{1}{t\,\eta_{t-1}^2 G_{t-1}},\quad \beta_t = 1-\alpha_t,

  :math:`G_{t+1} = G_t + \|\nabla f(x_t,\xi_t) - \nabla f(x_t,\xi'_t)\|^2 +
  \mathfrak{g}^2((t+1)^{1/4} - t^{1/4})`, with :math:`C = \sqrt{7/(26
  \mathfrak{g}^{6/7})}`, :math:`D = C^{-14/3}`, :math:`G_0 = D`,
  :math:`G_1 = 3\mathfrak{g}^2 + D`, :math:`m_0 = 0`; then the NIGT steps:
  :math:`m_t = \beta_t m_{t-1} + (1-\beta_t) g_t`,
  :math:`w_{t+1} = w_t - \eta_t m_t/\|m_t\|`, and the params move to
  :math:`x_{t+1} = w_{t+1} + \frac{\beta_{t+1}}{1-\beta_{t+1}}(w_{t+1} - w_t)`.

  The training step provides the second gradient as an extra argument:
  split the batch into two independent halves, take ``g`` on one and ``g2``
  on the other (both at the current params), then
  ``tx.update(g, state, params, second_grads=g2)``.

  Args:
    learning_rate: a multiplier on the adaptive :math:`\eta_t` (1 is the
      paper's algorithm), a constant or a schedule.
    gradient_bound: :math:`\mathfrak{g} > 0`, a bound on per-sample
      gradient norms.
    weight_decay: L2 coefficient added to ``g`` (not to the variance
      estimate, where it would cancel).
    axis_name: the mapped axis (``pmap``/``shard_map``) over which each
      leaf is sharded; squared norms are summed over it. Not for data
      parallelism: there, average the gradients first.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; params are ``x_t`` as for
    :func:`nigt` and :func:`igt_true_params` recovers ``w_t``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w, shift: jnp.sum((w - 3. + shift) ** 2)
    >>> tx = normopt.adaptive_nigt(gradient_bound=10.0)
    >>> x = jnp.zeros(2)
    >>> state = tx.init(x)
    >>> for t in range(50):
    ...   g, g2 = jax.grad(loss)(x, 0.1), jax.grad(loss)(x, -0.1)
    ...   u, state = tx.update(g, state, x, second_grads=g2)
    ...   x = optax.apply_updates(x, u)
    >>> w = normopt.igt_true_params(x, state)
    >>> bool(loss(w, 0.) < loss(jnp.zeros(2), 0.))  # the loss went down
    True

  References:
    Cutkosky & Mehta, *Momentum Improves Normalized SGD*, ICML 2020, Alg. 2
    and Theorem 4, https://arxiv.org/abs/2002.03305.
  """
  check_non_negative("learning_rate", learning_rate)
  check_non_negative("weight_decay", weight_decay)
  check_positive("gradient_bound", gradient_bound)
  c_const = (7.0 / (26.0 * gradient_bound ** (6.0 / 7.0))) ** 0.5
  d_const = c_const ** (-14.0 / 3.0)
  log_c = jnp.log(c_const)

  # In logs, so that G (a sum of squared gradient norms, kept finite by
  # clamping at the dtype's max) never makes inf/inf or 0*inf.
  def log_eta(g, t):  # log η_t from G_t at 1-based step t
    return log_c - (2.0 * jnp.log(g) + 3.0 * jnp.log(t + 1.0)) / 7.0

  def alpha(g_prev, t):  # α_t = 1/(t η_{t-1}² G_{t-1}) <= t^(-1/7) <= 1
    log_alpha = -jnp.log(t) - 2.0 * log_eta(g_prev, t - 1.0) - jnp.log(g_prev)
    return jnp.minimum(jnp.exp(log_alpha), 1.0)

  def init_fn(params):
    dtype = numerics.norm_dtype(params)
    return AdaptiveNigtState(
        count=jnp.zeros((), jnp.int32),
        previous_g=jnp.asarray(d_const, dtype),
        current_g=jnp.asarray(3 * gradient_bound ** 2 + d_const, dtype),
        momentum=jax.tree.map(jnp.zeros_like, params),
        igt=IgtExtrapolateState(jnp.zeros((), jnp.int32),
                                init_true_params(params)))

  def update_fn(updates, state, params=None, *, second_grads=None,
                **extra_args):
    del extra_args
    if params is None:
      raise ValueError("adaptive_nigt needs the params (x_t): call "
                       "update(g, state, params, second_grads=g2)")
    if second_grads is None:
      raise ValueError(
          "adaptive_nigt needs a second, independent gradient at the same "
          "point: update(g, state, params, second_grads=g2)")
    second_grads = blocks_lib.drop_masked(second_grads, updates)
    if jax.tree.structure(second_grads) != jax.tree.structure(updates) or any(
        jnp.shape(a) != jnp.shape(b) for a, b in zip(
            jax.tree.leaves(second_grads), jax.tree.leaves(updates))):
      raise ValueError("second_grads must have the structure and leaf shapes "
                       "of the updates")
    numerics.check_float_leaves(updates)
    t = state.count.astype(state.current_g.dtype) + 1.0
    g_prev, g_now = state.previous_g, state.current_g
    beta_now = 1.0 - alpha(g_prev, t)
    beta_next = 1.0 - alpha(g_now, t + 1.0)
    step_size = evaluate(learning_rate, state.count) * jnp.exp(
        log_eta(g_now, t))

    decayed = numerics.axpby(1.0, updates, weight_decay, params)
    momentum = numerics.axpby(beta_now, state.momentum, 1.0 - beta_now,
                              decayed)
    leaves, treedef = jax.tree.flatten(momentum)
    norm = numerics.global_norm(leaves, axis_name)
    step = jax.tree.unflatten(treedef, [
        (-step_size * numerics.divide_by_norm(m, norm)).astype(m.dtype)
        for m in leaves])
    true_params = numerics.axpby(1.0, state.igt.true_params, 1.0, step)
    out = extrapolated_step(true_params, step, params,
                            beta_next / (1.0 - beta_next))

    diff = [a - b.astype(a.dtype) for a, b in zip(
        jax.tree.leaves(updates), jax.tree.leaves(second_grads))]
    variance = numerics.global_norm(diff, axis_name).astype(g_now.dtype) ** 2
    g_new = jnp.minimum(
        g_now + variance + gradient_bound ** 2 * ((t + 1.0) ** 0.25 - t ** 0.25),
        jnp.finfo(g_now.dtype).max)
    count = optax.safe_increment(state.count)
    return out, AdaptiveNigtState(
        count, g_now, g_new, momentum,
        IgtExtrapolateState(optax.safe_increment(state.igt.count),
                            true_params))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
