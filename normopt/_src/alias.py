"""The papers' methods, each a short ``optax.chain`` of normopt primitives."""

from __future__ import annotations

import math
import re
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._src import lmo, numerics
from normopt._src.base import (
  ScalarOrSchedule,
  check_in_range,
  check_non_negative,
)
from normopt._src.blocks import BlockSpec
from normopt._src.extrapolate import igt_extrapolate
from normopt._src.momentum import heavy_ball, qh_combine
from normopt._src.normalize import normalize_global, normalize_per_block
from normopt._src.trust import Mask, exclude_bias_and_norm, trust_ratio


def _float_updates() -> optax.GradientTransformation:
  """The identity, raising normopt's TypeError on non-float leaves."""
  def check(updates, params=None):
    del params
    numerics.check_float_leaves(updates)
    return updates
  return optax.stateless(check)


def _check_rate_and_decay(learning_rate, weight_decay):
  check_non_negative("learning_rate", learning_rate)
  check_non_negative("weight_decay", weight_decay)


def sngm(learning_rate: ScalarOrSchedule, *, beta: ScalarOrSchedule = 0.9,
         weight_decay: float = 0.0, eps: float = 0.0,
         axis_name: str | None = None) -> optax.GradientTransformation:
  r"""Stochastic normalized gradient descent with momentum (SNGM).

  .. math::
    u_{t+1} = \beta u_t + g_t/\|g_t\|, \qquad w_{t+1} = w_t - \eta u_{t+1},

  with :math:`g_t` the mini-batch gradient plus ``weight_decay * w`` and the
  norm taken over all params (global). ``‖u‖ ≤ 1/(1-β)`` (Lemma 2). For a
  budget of C gradient computations the paper takes ``B = √C`` and
  ``η = √(B/C)`` (Corollary 1).

  Args:
    learning_rate: η, a constant or an optax schedule.
    beta: momentum β in [0, 1) (paper default 0.9), or a schedule.
    weight_decay: L2 coefficient added to the gradient before normalizing.
    eps: added to the norm (see :func:`normalize_global`).
    axis_name: the mapped axis (``pmap``/``shard_map``) over which each
      leaf is sharded; squared norms are summed over it. Not for data
      parallelism: there, average the gradients first (see the
      distributed-training guide).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w['k'] - 3.) ** 2)
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.sngm(0.1)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(w)):.4f}")
    loss 0.0034

  References:
    Zhao, Shi, Xie, Li, *Stochastic normalized gradient descent with
    momentum for large-batch training*, Sci. China Inf. Sci. 2024,
    https://arxiv.org/abs/2007.13985, Alg. 1.
  """
  _check_rate_and_decay(learning_rate, weight_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      normalize_global(eps=eps, axis_name=axis_name),
      heavy_ball(beta),
      optax.scale_by_learning_rate(learning_rate),
  )


def sngd(learning_rate: ScalarOrSchedule, *, weight_decay: float = 0.0,
         eps: float = 0.0, axis_name: str | None = None
         ) -> optax.GradientTransformation:
  """Stochastic normalized gradient descent: :func:`sngm` with ``β = 0``.

  ``w ← w - η g/‖g‖``. The chain leaves the momentum buffer out (with β = 0
  it only copies ``g``), which saves two of its six memory streams.

  Args:
    learning_rate: η, a constant or an optax schedule.
    weight_decay: L2 coefficient added to the gradient before normalizing.
    eps: added to the norm (see :func:`normalize_global`).
    axis_name: the mapped axis (``pmap``/``shard_map``) over which each
      leaf is sharded; squared norms are summed over it. Not for data
      parallelism: there, average the gradients first (see the
      distributed-training guide).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w['k'] - 3.) ** 2)
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.sngd(0.1)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(w)):.4f}")
    loss 0.0000

  References:
    Zhao, Shi, Xie, Li, *Stochastic normalized gradient descent with
    momentum for large-batch training*, Sci. China Inf. Sci. 2024,
    https://arxiv.org/abs/2007.13985, Sec. 4 (SNGM with β = 0).
  """
  _check_rate_and_decay(learning_rate, weight_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      normalize_global(eps=eps, axis_name=axis_name),
      optax.scale_by_learning_rate(learning_rate),
  )


def block_sngm(learning_rate: ScalarOrSchedule, *,
               beta: ScalarOrSchedule = 0.9, weight_decay: float = 0.0,
               eps: float = 0.0, blocks: BlockSpec = None,
               axis_name: str | None = None
               ) -> optax.GradientTransformation:
  r"""Block-wise SNGM: each block normalized by its own norm.

  .. math::
    u^{(s)}_{t+1} = \beta u^{(s)}_t + g^{(s)}_t/\|g^{(s)}_t\|, \qquad
    w^{(s)}_{t+1} = w^{(s)}_t - \eta u^{(s)}_{t+1} .

  Args:
    learning_rate: η, a constant or an optax schedule.
    beta: momentum β in [0, 1), or a schedule.
    weight_decay: L2 coefficient added to the gradient before normalizing.
    eps: added to each block norm.
    blocks: ``None`` (one block per leaf) or labels (see
      :func:`normalize_per_block`).
    axis_name: the mapped axis (``pmap``/``shard_map``) over which each
      leaf is sharded; squared norms are summed over it. Not for data
      parallelism: there, average the gradients first (see the
      distributed-training guide).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w['k'] - 3.) ** 2)
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.block_sngm(0.1)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(w)):.4f}")
    loss 0.0034

  References:
    Zhao, Shi, Xie, Li, *Stochastic normalized gradient descent with
    momentum for large-batch training*, Sci. China Inf. Sci. 2024,
    https://arxiv.org/abs/2007.13985, eq. (13)-(14).
  """
  _check_rate_and_decay(learning_rate, weight_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      normalize_per_block(eps=eps, blocks=blocks, axis_name=axis_name),
      heavy_ball(beta),
      optax.scale_by_learning_rate(learning_rate),
  )


def lars(learning_rate: ScalarOrSchedule, *, weight_decay: float = 0.0,
         trust_coefficient: float = 0.001, eps: float = 0.0,
         momentum: ScalarOrSchedule = 0.9, nesterov: bool = False,
         mask: Mask = True, blocks: BlockSpec = None,
         axis_name: str | None = None,
         ) -> optax.GradientTransformationExtraArgs:
  r"""Layer-wise adaptive rate scaling (LARS).

  .. math::
    \gamma_k = \eta\, k \frac{\|w_k\|}{\|g_k\| + \lambda \|w_k\|}, \qquad
    v \leftarrow \mu v + \gamma_k (g_k + \lambda w_k), \qquad w \leftarrow w - v .

  Equal to ``optax.lars`` with the same arguments wherever both norms are
  non-zero, up to where weight decay enters the denominator (optax:
  ``‖g + λw‖``; here the original ``‖g‖ + λ‖w‖``). A zero-norm parameter
  block is scaled as if ``‖w‖ = 1`` rather than by ratio 1 (optax), so a
  zero-initialised bias takes a bounded step.

  The trust ratio applies to every leaf by default (``mask=True``, as in
  optax). The papers leave biases and normalization params out
  (``mask=None`` or :func:`exclude_bias_and_norm`): those then take plain
  momentum SGD steps at the raw learning rate, without weight decay. That
  rate is LARS's large ``γ_scale`` (2-40 on MNIST-1D), and in the tuned
  benchmark the exclusion cost 4.5-27 points of test accuracy at batch 4096
  (1-D CNN) and made batch 128 diverge above lr 1 on the same CNN with
  LayerNorm; see the benchmarks' README. With ``mask=True`` the trust
  coefficient only rescales the learning rate.

  Args:
    learning_rate: η (``γ_scale`` in the CLARS paper), constant or schedule.
    momentum: μ in [0, 1), or a schedule.
    weight_decay: λ.
    trust_coefficient: k (η = 0.001 in the papers).
    eps: added to the trust-ratio denominator.
    nesterov: use Nesterov momentum.
    mask: which leaves get the trust ratio and weight decay (``True``,
      the default: all; ``None``: all but biases and normalization params,
      the papers' choice; or a tree of bools or a callable on the params).
    blocks: which leaves share one trust ratio: ``None`` (one per leaf) or
      labels, as for :func:`normalize_per_block`.
    axis_name: the mapped axis (``pmap``/``shard_map``) over which each
      leaf is sharded; squared norms are summed over it. Not for data
      parallelism: there, average the gradients first (see the
      distributed-training guide).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (it needs ``params``).

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w['k'] - 3.) ** 2)
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.lars(1.0, trust_coefficient=0.1)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(w)):.4f}")
    loss 1.0489

  References:
    You, Gitman, Ginsburg, *Large Batch Training of Convolutional Networks*,
    2017, https://arxiv.org/abs/1708.03888; Huo, Gu, Huang, *Large Batch
    Training Does Not Need Warmup*, 2020, eq. (3),
    https://arxiv.org/abs/2002.01576.
  """
  _check_rate_and_decay(learning_rate, weight_decay)
  check_in_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
  return optax.chain(
      trust_ratio("lars", trust_coefficient=trust_coefficient, eps=eps,
                  weight_decay=weight_decay, mask=mask, blocks=blocks,
                  axis_name=axis_name),
      optax.scale_by_learning_rate(learning_rate),
      heavy_ball(momentum, nesterov=nesterov),
  )


def clars(learning_rate: ScalarOrSchedule, *, weight_decay: float = 0.0,
          trust_coefficient: float = 0.01, eps: float = 0.0,
          momentum: ScalarOrSchedule = 0.9, mask: Mask = True,
          blocks: BlockSpec = None, axis_name: str | None = None,
          ) -> optax.GradientTransformationExtraArgs:
  r"""Complete layer-wise adaptive rate scaling (CLARS), no warmup needed.

  LARS with the norm of the mean gradient replaced by the mean of the
  per-example gradient norms of each layer, and Nesterov momentum (eq. 4):

  .. math::
    \gamma_k = \eta\, k \frac{\|w_k\|}{\frac1B \sum_i \|\nabla_k f_i(w)\|} .

  ``update`` needs the extra argument ``per_example_norms`` (one scalar per
  block, shaped like the params). Under data parallelism average them over
  the replicas together with the gradients (one ``pmean`` of
  ``(grads, norms)``) before ``update``.

  Args:
    learning_rate: η (``γ_scale``), a constant or an optax schedule.
    momentum: β in [0, 1), or a schedule.
    weight_decay: λ, added to the update and the denominator.
    trust_coefficient: k (η = 0.01 in CLARS Alg. 1).
    eps: added to the denominator.
    mask: which leaves get the trust ratio and weight decay (``True``,
      the default: all, as for :func:`lars`, where the benchmarks' evidence
      for it is summarised; ``None``: all but biases and normalization
      params, the papers' choice; or a tree of bools or a callable).
    blocks: which leaves share one trust ratio: ``None`` (one per leaf) or
      labels, as for :func:`normalize_per_block`.
    axis_name: the mapped axis (``pmap``/``shard_map``) over which each
      leaf is sharded; squared norms are summed over it. Not for data
      parallelism: there, average the gradients first (see the
      distributed-training guide).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> x = jnp.array([[1., 0.], [0., 1.], [1., 1.]])
    >>> y = jnp.array([[1.], [2.], [3.]])
    >>> loss = lambda w, batch: jnp.mean((batch[0] @ w['k'] - batch[1]) ** 2)
    >>> w = {'k': jnp.ones((2, 1))}
    >>> tx = normopt.clars(0.5, trust_coefficient=0.1)
    >>> state = tx.init(w)
    >>> for _ in range(30):
    ...   _, g, norms = normopt.per_example_block_norms(loss, w, (x, y))
    ...   u, state = tx.update(g, state, w, per_example_norms=norms)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(w, (x, y))):.4f}")
    loss 0.0019

  References:
    Huo, Gu, Huang, *Large Batch Training Does Not Need Warmup* (CLARS),
    2020, Alg. 1, eq. (4)-(5), https://arxiv.org/abs/2002.01576.
  """
  _check_rate_and_decay(learning_rate, weight_decay)
  check_in_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
  return optax.chain(
      trust_ratio("clars", trust_coefficient=trust_coefficient, eps=eps,
                  weight_decay=weight_decay, mask=mask, blocks=blocks,
                  axis_name=axis_name),
      optax.scale_by_learning_rate(learning_rate),
      heavy_ball(momentum, nesterov=True),
  )


def normalized_sgdm(learning_rate: ScalarOrSchedule, *,
                    beta: ScalarOrSchedule = 0.9, weight_decay: float = 0.0,
                    eps: float = 0.0, axis_name: str | None = None
                    ) -> optax.GradientTransformation:
  r"""Normalized SGD with momentum: normalize the EMA of the gradients.

  .. math::
    m_t = \beta m_{t-1} + (1-\beta) g_t,\ m_1 = g_1, \qquad
    w_{t+1} = w_t - \eta\, m_t/\|m_t\| .

  Args:
    learning_rate: η, a constant or an optax schedule.
    beta: β in [0, 1), or a schedule.
    weight_decay: L2 coefficient added to the gradient.
    eps: added to the norm.
    axis_name: the mapped axis (``pmap``/``shard_map``) over which each
      leaf is sharded; squared norms are summed over it. Not for data
      parallelism: there, average the gradients first (see the
      distributed-training guide).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w['k'] - 3.) ** 2)
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.normalized_sgdm(0.1)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(w)):.4f}")
    loss 0.6400

  References:
    Cutkosky & Mehta, *Momentum Improves Normalized SGD*, ICML 2020,
    eq. (2)-(3) and Theorem 1, https://arxiv.org/abs/2002.03305.
  """
  _check_rate_and_decay(learning_rate, weight_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      heavy_ball(beta, ema=True, init="first"),
      normalize_global(eps=eps, axis_name=axis_name),
      optax.scale_by_learning_rate(learning_rate),
  )


def nigt(learning_rate: ScalarOrSchedule, *, beta: ScalarOrSchedule = 0.9,
         weight_decay: float = 0.0, eps: float = 0.0,
         axis_name: str | None = None) -> optax.GradientTransformation:
  r"""Normalized SGD with implicit gradient transport (NIGT).

  .. math::
    x_t = w_t + \tfrac{\beta}{1-\beta}(w_t - w_{t-1}),\quad
    m_t = \beta m_{t-1} + (1-\beta)\nabla f(x_t),\ m_1 = \nabla f(x_1),\quad
    w_{t+1} = w_t - \eta\, m_t/\|m_t\| .

  The params the user holds are :math:`x_t` (take gradients there, as the
  paper does); :func:`igt_true_params` returns :math:`w_t` for evaluation
  and saving.

  Args:
    learning_rate: η, a constant or an optax schedule.
    beta: β in [0, 1), or a schedule.
    weight_decay: L2 coefficient added to the gradient (taken at ``x_t``).
    eps: added to the norm.
    axis_name: the mapped axis (``pmap``/``shard_map``) over which each
      leaf is sharded; squared norms are summed over it. Not for data
      parallelism: there, average the gradients first (see the
      distributed-training guide).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w['k'] - 3.) ** 2)
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.nigt(0.1)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(normopt.igt_true_params(w, state))):.4f}")
    loss 0.0000

  References:
    Cutkosky & Mehta, *Momentum Improves Normalized SGD*, ICML 2020, Alg. 1,
    https://arxiv.org/abs/2002.03305.
  """
  _check_rate_and_decay(learning_rate, weight_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      heavy_ball(beta, ema=True, init="first"),
      normalize_global(eps=eps, axis_name=axis_name),
      optax.scale_by_learning_rate(learning_rate),
      igt_extrapolate(beta),
  )


def qhm(learning_rate: ScalarOrSchedule, *, beta: ScalarOrSchedule = 0.9,
        nu: ScalarOrSchedule = 0.7, weight_decay: float = 0.0
        ) -> optax.GradientTransformation:
  r"""Mini-batch quasi-hyperbolic momentum (QHM).

  .. math::
    d_k = (1-\beta_k) g_k + \beta_k d_{k-1}, \quad
    m_k = (1-\nu_k) g_k + \nu_k d_k, \quad x_{k+1} = x_k - \alpha_k m_k .

  ``nu`` is γ in the increasing-batch paper. ν = 0 is SGD, ν = 1 is
  :func:`nshb`, ν = β is :func:`snag`, equal to
  ``optax.sgd(α (1-β), momentum=β, nesterov=True)``.

  Args:
    learning_rate: α, a constant or a schedule (see ``normopt.schedules`` for
      the paper's epoch-keyed ones).
    beta: β in [0, 1), or a schedule.
    nu: ν in [0, 1] (Ma & Yarats recommend 0.7), or a schedule.
    weight_decay: L2 coefficient added to the gradient.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w['k'] - 3.) ** 2)
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.qhm(0.1, nu=0.7)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(w)):.4f}")
    loss 0.0034

  References:
    Ma & Yarats, *Quasi-hyperbolic momentum and Adam for deep learning*,
    ICLR 2019, https://arxiv.org/abs/1810.06801; Imaizumi & Iiduka, *Both
    Asymptotic and Non-Asymptotic Convergence of Quasi-Hyperbolic Momentum
    using Increasing Batch Size*, ACML 2025, Alg. 1.
  """
  _check_rate_and_decay(learning_rate, weight_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      qh_combine(beta, nu=nu),
      optax.scale_by_learning_rate(learning_rate),
  )


def nshb(learning_rate: ScalarOrSchedule, *, beta: ScalarOrSchedule = 0.9,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Normalized stochastic heavy ball: :func:`qhm` with ν = 1.

  ``d_k = (1-β) g_k + β d_{k-1}``, ``x_{k+1} = x_k - α d_k``; equal to
  ``optax.sgd(α (1-β), momentum=β)``.

  Args:
    learning_rate: α, a constant or a schedule.
    beta: β in [0, 1), or a schedule.
    weight_decay: L2 coefficient added to the gradient.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w['k'] - 3.) ** 2)
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.nshb(0.5)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(w)):.4f}")
    loss 0.0711

  References:
    Gupal & Bazhenov, 1972; Imaizumi & Iiduka, *Both Asymptotic and
    Non-Asymptotic Convergence of Quasi-Hyperbolic Momentum using Increasing
    Batch Size*, ACML 2025, Sec. 1.
  """
  return qhm(learning_rate, beta=beta, nu=1.0, weight_decay=weight_decay)


def snag(learning_rate: ScalarOrSchedule, *, beta: ScalarOrSchedule = 0.9,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Stochastic Nesterov accelerated gradient: :func:`qhm` with ν = β.

  Equal to ``optax.sgd(α (1-β), momentum=β, nesterov=True)``.

  Args:
    learning_rate: α, a constant or a schedule.
    beta: β in [0, 1), or a schedule.
    weight_decay: L2 coefficient added to the gradient.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w['k'] - 3.) ** 2)
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.snag(0.5)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"loss {float(loss(w)):.4f}")
    loss 0.0004

  References:
    Gitman, Lang, Zhang, Xiao, *Understanding the Role of Momentum in
    Stochastic Gradient Methods*, NeurIPS 2019,
    https://arxiv.org/abs/1910.13962; Imaizumi & Iiduka, *Both Asymptotic
    and Non-Asymptotic Convergence of Quasi-Hyperbolic Momentum using
    Increasing Batch Size*, ACML 2025, Sec. 1.
  """
  return qhm(learning_rate, beta=beta, nu=beta, weight_decay=weight_decay)


def lamb(learning_rate: ScalarOrSchedule, *, b1: float = 0.9,
         b2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.0,
         mask: Mask = None, axis_name: str | None = None,
         ) -> optax.GradientTransformationExtraArgs:
  r"""Layer-wise adaptive moments (LAMB): Adam directions, LARS-style ratios.

  .. math::
    r_t = \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}, \qquad
    w^{(s)} \leftarrow w^{(s)} - \eta\,
      \frac{\|w^{(s)}\|}{\|r^{(s)}_t + \lambda w^{(s)}\|}
      \left(r^{(s)}_t + \lambda w^{(s)}\right),

  with :math:`\hat m, \hat v` Adam's bias-corrected moments. The chain is
  ``optax.scale_by_adam`` → decayed weights → :func:`trust_ratio` with
  coefficient 1 → ``-lr``, so the ratio's norms are normopt's (float32 or
  wider, exact at any scale). With ``mask=True`` it equals
  ``optax.lamb(learning_rate, b1, b2, eps, weight_decay=weight_decay)``
  step for step. It differs only where optax's is unsafe: a block with
  ``‖w‖ = 0`` takes a step of norm ``lr`` (optax: ratio 1, the raw Adam step),
  and norms do not overflow. ``mask`` (default: all but biases and
  normalization params, as for :func:`lars`) selects the leaves that get
  weight decay and the trust ratio; the others take plain Adam steps.

  Args:
    learning_rate: η, a constant or an optax schedule.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: added to :math:`\sqrt{\hat v}` (as in optax.lamb).
    weight_decay: λ, decoupled (added to the Adam direction).
    mask: which leaves get weight decay and the trust ratio (``None``:
      all but biases and normalization params; ``True``: all).
    axis_name: the mapped axis (``pmap``/``shard_map``) over which each
      leaf is sharded; squared norms are summed over it.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (it needs ``params``).

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> w = {'k': jnp.ones((2, 2))}
    >>> tx = normopt.lamb(0.1, mask=True)
    >>> state = tx.init(w)
    >>> for _ in range(3):
    ...   g = jax.grad(lambda p: jnp.sum((p['k'] - 3.) ** 2))(w)
    ...   u, state = tx.update(g, state, w)
    ...   w = optax.apply_updates(w, u)
    >>> round(float(w['k'][0, 0]), 2)
    1.33

  References:
    You et al., *Large Batch Optimization for Deep Learning: Training BERT
    in 76 minutes*, ICLR 2020, Alg. 2, https://arxiv.org/abs/1904.00962.
  """
  _check_rate_and_decay(learning_rate, weight_decay)
  check_in_range("b1", b1, 0.0, 1.0, high_inclusive=False)
  check_in_range("b2", b2, 0.0, 1.0, high_inclusive=False)
  check_non_negative("eps", eps)
  decay_mask = None if mask is True else (
      exclude_bias_and_norm if mask is None else mask)
  return optax.chain(
      _float_updates(),  # a clear TypeError before scale_by_adam's
      # moments in float32 or wider: in float16 (1-b1) g and g² underflow
      _in_float32(optax.scale_by_adam(b1=b1, b2=b2, eps=eps)),
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      trust_ratio("lars", trust_coefficient=1.0, mask=mask,
                  axis_name=axis_name),
      optax.scale_by_learning_rate(learning_rate),
  )


def signum(learning_rate: ScalarOrSchedule, *,
           beta: ScalarOrSchedule = 0.9,
           axis_name: str | None = None) -> optax.GradientTransformation:
  r"""Signum: the sign of an exponential moving average of the gradients.

  .. math::
    m_{t+1} = \beta m_t + (1-\beta) g_t, \qquad
    w_{t+1} = w_t - \eta\, \mathrm{sign}(m_{t+1}),

  steepest descent under the ℓ∞ norm (``normalize_per_block(norm="sign")``)
  applied to EMA momentum. Equals ``optax.signum(learning_rate, beta)``.

  Args:
    learning_rate: η, a constant or an optax schedule.
    beta: EMA coefficient β in [0, 1), or a schedule.
    axis_name: mapped axis over which the leaves are shards (only the
      diagnostic ℓ1 norms in the state are summed over it).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.signum(0.1)
    >>> params = {'w': jnp.array([1., -2.])}
    >>> u, _ = tx.update({'w': jnp.array([3., -1e-9])}, tx.init(params))
    >>> u['w']
    Array([-0.1,  0.1], dtype=float32)

  References:
    Bernstein, Wang, Azizzadenesheli, Anandkumar, *signSGD: Compressed
    Optimisation for Non-Convex Problems*, ICML 2018, Alg. 3;
    Pethick et al., *Training Deep Learning Models with Norm-Constrained
    LMOs*, ICML 2025, Table 1.
  """
  check_non_negative("learning_rate", learning_rate)
  check_in_range("beta", beta, 0.0, 1.0, high_inclusive=False)
  # the momentum in float32 or wider: in float16 (1-β) g underflows
  return optax.chain(
      _float_updates(),
      _in_float32(optax.chain(
          heavy_ball(beta, ema=True),
          normalize_per_block(norm="sign", axis_name=axis_name))),
      optax.scale_by_learning_rate(learning_rate),
  )


def hidden_matrices(params):
  """Muon's default selection: True for the 2-D leaves (dense kernels).

  Leaves of other ranks (biases, scales, conv and attention kernels) go to
  Muon's other optimizer unless dimension numbers say how to read them as
  matrices (:func:`flax_weight_dimension_numbers`). Embedding tables and
  the output head are 2-D too, which the reference sends to Adam: leave
  them out with ``mask`` or with None dimension numbers.

  Args:
    params: the params (any pytree of arrays).

  Returns:
    A tree like ``params`` of Python bools.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> normopt.hidden_matrices({'w': jnp.ones((3, 2)), 'b': jnp.ones(2)})
    {'b': False, 'w': True}

  References:
    Jordan et al., *Muon: An optimizer for hidden layers in neural
    networks*, 2024.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) == 2, params)


def _in_float32(inner: optax.GradientTransformation
                ) -> optax.GradientTransformation:
  """``inner`` run on float32 (or wider) copies of the updates and params,
  its output cast back to each leaf's dtype (Adam's ``eps`` and squares
  underflow in float16, and so does a momentum ``(1-β) g``)."""
  def up_one(x):
    dtype = numerics.accumulation_dtype(x.dtype)
    if isinstance(x, jax.ShapeDtypeStruct):  # abstract init
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return jnp.asarray(x).astype(dtype)

  def up(tree):
    return jax.tree.map(up_one, tree)

  def init_fn(params):
    return inner.init(up(params))

  def update_fn(updates, state, params=None, **extra_args):
    out, state = inner.update(up(updates), state,
                              None if params is None else up(params),
                              **extra_args)
    return jax.tree.map(lambda o, u: o.astype(u.dtype), out, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _scale_by_shape(dims, consistent_rms) -> optax.GradientTransformation:
  """Each orthogonalized leaf times Muon's shape factor
  (:func:`normopt._src.lmo.shape_factor`) of its matrix view."""
  def scale(updates, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    per_leaf = lmo.leaf_dimension_numbers(dims, updates)
    return treedef.unflatten([
        u * jnp.asarray(lmo.shape_factor(u.shape, d, consistent_rms),
                        u.dtype) for u, d in zip(leaves, per_leaf)])
  return optax.stateless(scale)


class BiasCorrectedMomentumState(NamedTuple):
  """State of Muon's ``bias_correction=True`` momentum: the step count and
  the (uncorrected) EMA of the gradients."""
  count: jax.Array
  mu: optax.Updates


def _bias_corrected_momentum(beta: float, nesterov: bool, mu_dtype
                             ) -> optax.GradientTransformation:
  """optax.contrib.scale_by_muon's momentum: the EMA ``m`` bias-corrected,
  ``β m̂_{t+1} + (1-β) ĝ_t`` with Nesterov (``m̂``: divided by
  ``1-β^{t+1}``, ``ĝ``: by ``1-β^t``), else ``m / (1-β^t)``."""
  def init_fn(params):
    return BiasCorrectedMomentumState(
        jnp.zeros((), jnp.int32), optax.tree.zeros_like(params, mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, beta, 1)
    count = optax.safe_increment(state.count)
    if nesterov:
      out = jax.tree.map(
          lambda m, g: beta * m + (1 - beta) * g,
          optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
          optax.tree.bias_correction(updates, beta, count))
    else:
      out = optax.tree.bias_correction(mu, beta, count)
    out = jax.tree.map(lambda o, g: o.astype(g.dtype), out, updates)
    return out, BiasCorrectedMomentumState(count,
                                           optax.tree.cast(mu, mu_dtype))

  return optax.GradientTransformation(init_fn, update_fn)


class NeuronNormState(NamedTuple):
  """State of NorMuon's neuron-wise normalization: the EMA of each output
  neuron's mean squared orthogonalized update (float32 or wider; the
  reduction axes kept with size one)."""
  v: optax.Updates


def _neuron_norm_shape(shape, dims):
  axes = lmo.matrix_axes(shape, dims)
  return tuple(1 if a in axes.reduction else n for a, n in enumerate(shape))


def _neuron_wise_normalization(b2: float, dims, eps: float = 1e-10
                               ) -> optax.GradientTransformation:
  r"""NorMuon's step after orthogonalization, per matrix ``O`` of a leaf:

  .. math::
    v \leftarrow \beta_2 v + (1-\beta_2)\,\mathrm{mean}_{\text{in}}(O^2),
    \quad \hat O = O / (\sqrt v + \epsilon), \quad
    \hat O \leftarrow \hat O\, \|O\|_F / (\|\hat O\|_F + \epsilon),

  ``v`` one entry per output neuron (the mean is over the reduction axes).
  """
  def init_fn(params):
    per_leaf = lmo.leaf_dimension_numbers(dims, params)
    leaves, treedef = jax.tree.flatten(params)
    return NeuronNormState(treedef.unflatten([
        jnp.zeros(_neuron_norm_shape(p.shape, d),
                  numerics.accumulation_dtype(p.dtype))
        for p, d in zip(leaves, per_leaf)]))

  def one(o, v, d):
    axes = lmo.matrix_axes(o.shape, d)
    x = o.astype(v.dtype)
    v = b2 * v + (1 - b2) * jnp.mean(jnp.square(x), axis=axes.reduction,
                                     keepdims=True)
    y = x / (jnp.sqrt(v) + eps)
    matrix = axes.reduction + axes.output
    frob = jnp.sqrt(jnp.sum(jnp.square(x), axis=matrix, keepdims=True))
    frob_y = jnp.sqrt(jnp.sum(jnp.square(y), axis=matrix, keepdims=True))
    return (y * (frob / (frob_y + eps))).astype(o.dtype), v

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    per_leaf = lmo.leaf_dimension_numbers(dims, updates)
    pairs = [one(o, v, d) for o, v, d in
             zip(leaves, treedef.flatten_up_to(state.v), per_leaf)]
    return (treedef.unflatten([o for o, _ in pairs]),
            NeuronNormState(treedef.unflatten([v for _, v in pairs])))

  return optax.GradientTransformation(init_fn, update_fn)


def _orthogonalized_leaves(name, params, mask, dims) -> list[bool]:
  """Which leaves Muon orthogonalizes, in leaf order; a ``ValueError``
  naming a selected leaf that has no matrix view."""
  leaves = jax.tree.leaves(params)
  if mask is None:
    chosen = ([d is not None for d in lmo.leaf_dimension_numbers(dims, params)]
              if dims is not None else [jnp.ndim(p) == 2 for p in leaves])
  elif mask is True:
    chosen = [True] * len(leaves)
  else:
    chosen = [bool(f) for f in jax.tree.leaves(
        mask(params) if callable(mask) else mask)]
    if len(chosen) != len(leaves):
      raise ValueError(f"{name}: mask must give one bool per leaf, got "
                       f"{len(chosen)} for {len(leaves)} leaves")
  lmo.checked_dimension_numbers(dims, params, chosen, who=f"{name}: ")
  return chosen


def _warn_ambiguous_leaves(name, params, skipped, fate, remedy):
  """Warns that the leaves flagged in ``skipped`` (of 3 or more dimensions,
  with no dimension numbers) get ``fate`` instead of a matrix norm."""
  paths = [path for path, skip in zip(numerics.leaf_paths(params), skipped)
           if skip]
  if paths:
    shown = ", ".join(paths[:4]) + (" ..." if len(paths) > 4 else "")
    warnings.warn(
        f"{name}: {len(paths)} leaves of 3 or more dimensions ({shown}) "
        f"{fate}, since their matrix view is ambiguous; pass "
        "weight_dimension_numbers (normopt.flax_weight_dimension_numbers("
        f"model) for Flax NNX) {remedy}", stacklevel=3)


def _with_init_check(name, tx, mask, dims):
  """``tx`` whose init warns once when the selection silently changes the
  method: nothing is orthogonalized, or leaves of 3+ dimensions go to the
  other optimizer for want of dimension numbers."""
  def init_fn(params):
    chosen = _orthogonalized_leaves(name, params, mask, dims)
    if jax.tree.leaves(params) and not any(chosen):
      warnings.warn(
          f"{name}: no leaf is orthogonalized (no 2-D leaf, and no "
          "weight_dimension_numbers or mask selects one); every leaf goes "
          "to the other optimizer (AdamW unless other is given), so this is "
          "not Muon", stacklevel=2)
    elif dims is None and mask is None:
      _warn_ambiguous_leaves(
          name, params, [not keep and jnp.ndim(p) >= 3 for p, keep in
                         zip(jax.tree.leaves(params), chosen)],
          "go to the other optimizer",
          "to orthogonalize conv and attention kernels")
    return tx.init(params)
  return optax.GradientTransformation(init_fn, tx.update)


def _muon_family(name, learning_rate, *, beta, nesterov, weight_decay,
                 weight_decay_mask, ns_steps, ns_coeffs, preconditioning,
                 eps, consistent_rms, adaptive, mu_dtype,
                 weight_dimension_numbers, mask, adam_learning_rate, adam_b1,
                 adam_b2, adam_weight_decay, other, bias_correction,
                 axis_name, neuron_b2=None):
  """Muon and NorMuon: one chain, the neuron-wise step optional."""
  check_non_negative("learning_rate", learning_rate)
  check_in_range("beta", beta, 0.0, 1.0, high_inclusive=False)
  check_non_negative("weight_decay", weight_decay)
  if consistent_rms is not None:
    check_non_negative("consistent_rms", consistent_rms)
  # A None view of a 2-D leaf is (0, 1) throughout (lmo.matrix_axes).
  dims = weight_dimension_numbers

  momentum = (_bias_corrected_momentum(beta, nesterov, mu_dtype)
              if bias_correction else
              heavy_ball(beta, ema=True, nesterov=nesterov, mu_dtype=mu_dtype))
  links = [momentum,
           normalize_per_block(norm="spectral", eps=eps, ns_steps=ns_steps,
                               ns_coeffs=ns_coeffs,
                               preconditioning=preconditioning,
                               adaptive=adaptive,
                               weight_dimension_numbers=dims,
                               axis_name=axis_name)]
  if neuron_b2 is not None:
    links.append(_neuron_wise_normalization(neuron_b2, dims))
  matrices = optax.chain(
      _in_float32(optax.chain(*links)),
      _scale_by_shape(dims, consistent_rms),
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )
  if other is None:
    other = _in_float32(optax.adamw(
        learning_rate if adam_learning_rate is None else adam_learning_rate,
        b1=adam_b1, b2=adam_b2, eps=1e-10,
        weight_decay=(weight_decay if adam_weight_decay is None
                      else adam_weight_decay)))

  def labels(params):
    chosen = _orthogonalized_leaves(name, params, mask, dims)
    return jax.tree.structure(params).unflatten(
        ["muon" if c else "other" for c in chosen])

  tx = optax.chain(_float_updates(), optax.multi_transform(
      {"muon": matrices, "other": other}, labels))
  return _with_init_check(name, tx, mask, dims)


_MUON_FAMILY_ARGS = r"""
    weight_decay: decoupled weight decay λ of the orthogonalized leaves (the
      step multiplies them by ``1 - ηλ``).
    weight_decay_mask: which orthogonalized leaves are decayed (a tree of
      bools or a callable, as ``optax.add_decayed_weights``; default all).
    ns_steps: Newton-Schulz iterations.
    ns_coeffs: ``(a, b, c)``, an ``(n, 3)`` table (row ``i`` at iteration
      ``i``; its last row repeats past its end, and a longer table has its
      first ``ns_steps`` rows used), or a preset: ``"standard"``,
      ``"dion"``, ``"polar_express"``.
    preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or
      ``"schatten"`` (see :func:`normalize_per_block`).
    eps: added to the Frobenius (or spectral) norm of the pre-scale.
    consistent_rms: None for Jordan et al.'s shape factor
      ``sqrt(max(1, fan_out/fan_in))``; a number ``c`` for
      ``c·sqrt(max(fan_in, fan_out))``, an update RMS of ``c`` (Moonlight's
      AdamW-matched scaling; 0.2 is AdamW's typical RMS).
    adaptive: multiply each orthogonalized leaf by its dual (nuclear) norm
      ``<u, NS(u)>`` (Bernstein & Newhouse, arXiv 2409.20325).
    mu_dtype: the momentum's dtype. Default None: float32 or wider whatever
      the leaf dtype (optax's None keeps the leaf dtype, in which a
      float16 ``(1-β) g`` underflows and the step is lost); costs 4 bytes
      per orthogonalized float16/bfloat16 parameter instead of 2.
    weight_dimension_numbers: how each leaf is read as matrices: a tree of
      :class:`optax.contrib.MuonDimensionNumbers` (or a prefix of the
      params, or a callable on them) with None for leaves that go to the
      other optimizer, exactly as optax's ``muon_weight_dimension_numbers``;
      :func:`flax_weight_dimension_numbers` builds it for a Flax NNX model.
      Default None: the 2-D leaves are orthogonalized as ``(in, out)``, and
      leaves of three or more dimensions go to the other optimizer with a
      warning (their view is ambiguous).
    mask: which leaves are orthogonalized, overriding the selection by
      dimension numbers: a tree of bools or a callable on the params;
      ``True`` for every leaf. A selected leaf of 3+ dimensions needs
      dimension numbers.
    adam_learning_rate: the other optimizer's learning rate (default the
      same as ``learning_rate``).
    adam_b1: the other optimizer's Adam β₁.
    adam_b2: the other optimizer's Adam β₂.
    adam_weight_decay: its decoupled weight decay (default
      ``weight_decay``).
    other: the whole transformation for the remaining leaves, replacing
      the AdamW built from the ``adam_*`` arguments (default
      ``optax.adamw(adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=1e-10,
      weight_decay=adam_weight_decay)`` computed in float32).
    bias_correction: bias-correct the momentum as
      ``optax.contrib.scale_by_muon`` does (for parity with optax; the
      reference does not, so early steps differ).
    axis_name: orthogonalization needs each matrix whole, so a mapped axis
      over which the leaves are shards is refused with a ``ValueError``;
      gather the matrices first, or use ``jit`` with sharded arrays (GSPMD
      computes on the logical matrix; explicit-mesh shards are gathered).
"""


def muon(learning_rate: ScalarOrSchedule, *, beta: float = 0.95,
         nesterov: bool = True, weight_decay: float = 0.0,
         weight_decay_mask=None, ns_steps: int = 5,
         ns_coeffs: lmo.CoeffSpec = lmo.NS_COEFFS,
         preconditioning: str = "frobenius", eps: float = 0.0,
         consistent_rms: float | None = None, adaptive: bool = False,
         mu_dtype=None, weight_dimension_numbers=None, mask: Mask = None,
         adam_learning_rate: ScalarOrSchedule | None = None,
         adam_b1: float = 0.9, adam_b2: float = 0.95,
         adam_weight_decay: float | None = None,
         other: optax.GradientTransformation | None = None,
         bias_correction: bool = False,
         axis_name: str | None = None) -> optax.GradientTransformation:
  r"""Muon: momentum orthogonalized by Newton-Schulz, on hidden matrices.

  For each orthogonalized leaf, read as matrices ``(fan_in, fan_out)`` by its
  dimension numbers (Flax layout, ``y = x W``; other axes a batch):

  .. math::
    m_{t+1} = \beta m_t + (1-\beta) g_t, \quad
    u = (1-\beta) g_t + \beta m_{t+1}\ \text{(Nesterov; else } u = m_{t+1}),

    W \leftarrow (1 - \eta\lambda) W - \eta\, s\, \mathrm{NS}(u), \quad
    s = \sqrt{\max(1, \text{fan}_{out}/\text{fan}_{in})}
    \ \text{or}\ c\sqrt{\max(\text{fan}_{in}, \text{fan}_{out})},

  with ``NS`` the quintic Newton-Schulz iteration started from ``u`` over
  its exact Frobenius norm (``normalize_per_block(norm="spectral")``: exact
  at any gradient scale, computed in float32 or wider). Other leaves go
  through ``other`` (AdamW).

  With the same dimension numbers, ``bias_correction=True`` and
  ``eps=1e-8`` the step is ``optax.contrib.muon``'s. By default it differs
  from optax's in three documented ways: the momentum is not
  bias-corrected (the reference's), the pre-scale has no ``eps`` (optax's
  ``1e-8`` changes the step at small gradient scales and zeroes it at
  large ones), and the momentum is float32 for low-precision leaves.

  Args:
    learning_rate: η, a constant or an optax schedule (of the orthogonalized
      leaves; ``adam_learning_rate`` for the others).
    beta: momentum β in [0, 1) (reference: 0.95).
    nesterov: use the Nesterov form (reference: True).
    {family_args}
  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, normopt, optax
    >>> from optax.contrib import MuonDimensionNumbers as MDN
    >>> params = {'w': jnp.ones((4, 3)), 'qkv': jnp.ones((4, 2, 3)),
    ...           'b': jnp.zeros(3)}
    >>> dims = {'w': MDN(0, 1), 'qkv': MDN(0, (1, 2)), 'b': None}
    >>> tx = normopt.muon(0.02, weight_dimension_numbers=dims)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> u, _ = tx.update(grads, tx.init(params), params)
    >>> jax.tree.map(jnp.shape, u)
    {'b': (3,), 'qkv': (4, 2, 3), 'w': (4, 3)}

  References:
    Jordan, Jin, Boza, You, Cesista, Newhouse, Bernstein, *Muon: An
    optimizer for hidden layers in neural networks*, 2024 (reference code
    ``KellerJordan/Muon``); Liu et al., *Muon is Scalable for LLM
    Training*, arXiv 2502.16982 (``consistent_rms``); Amsel et al., *The
    Polar Express*, arXiv 2505.16932; Pethick et al., *Training Deep
    Learning Models with Norm-Constrained LMOs*, ICML 2025, Table 1.
  """
  return _muon_family(
      "muon", learning_rate, beta=beta, nesterov=nesterov,
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      ns_steps=ns_steps, ns_coeffs=ns_coeffs,
      preconditioning=preconditioning, eps=eps,
      consistent_rms=consistent_rms, adaptive=adaptive, mu_dtype=mu_dtype,
      weight_dimension_numbers=weight_dimension_numbers, mask=mask,
      adam_learning_rate=adam_learning_rate, adam_b1=adam_b1,
      adam_b2=adam_b2, adam_weight_decay=adam_weight_decay, other=other,
      bias_correction=bias_correction, axis_name=axis_name)


def _family_doc(fn, drop=()):
  """Puts the shared argument entries (less ``drop``) into ``fn``'s
  docstring in place of ``{family_args}``."""
  entries = re.split(r"\n(?=    \w+(?:, \w+)*:)", _MUON_FAMILY_ARGS.strip("\n"))
  kept = [e for e in entries if e.split(":")[0].strip() not in drop]
  fn.__doc__ = fn.__doc__.replace("    {family_args}\n",
                                  "\n".join(kept) + "\n\n")
  return fn


_family_doc(muon)


def normuon(learning_rate: ScalarOrSchedule, *, beta: float = 0.95,
            b2: float = 0.95, nesterov: bool = True,
            weight_decay: float = 0.0, weight_decay_mask=None,
            ns_steps: int = 5, ns_coeffs: lmo.CoeffSpec = lmo.NS_COEFFS,
            preconditioning: str = "frobenius", eps: float = 0.0,
            consistent_rms: float | None = None, mu_dtype=None,
            weight_dimension_numbers=None, mask: Mask = None,
            adam_learning_rate: ScalarOrSchedule | None = None,
            adam_b1: float = 0.9, adam_b2: float = 0.95,
            adam_weight_decay: float | None = None,
            other: optax.GradientTransformation | None = None,
            axis_name: str | None = None) -> optax.GradientTransformation:
  r"""NorMuon: Muon with neuron-wise normalization of the orthogonal step.

  Muon's momentum and orthogonalization ``O = NS(u)``, then, for each
  matrix and each output neuron ``j`` (a column in Flax layout):

  .. math::
    v_j \leftarrow \beta_2 v_j + (1-\beta_2)\,\mathrm{mean}_i O_{ij}^2,
    \quad \hat O_{ij} = O_{ij} / (\sqrt{v_j} + 10^{-10}),

    \hat O \leftarrow \hat O\,\|O\|_F / (\|\hat O\|_F + 10^{-10}),
    \quad W \leftarrow (1-\eta\lambda) W - \eta\, s\, \hat O,

  ``s`` Muon's shape factor. The rescale keeps the update's Frobenius norm
  Muon's, and redistributes it so that every output neuron moves at a
  similar RMS (the authors' ``zichongli5/NorMuon`` code; its PyTorch rows
  are Flax's columns). ``v`` is float32, one entry per output neuron, not
  bias-corrected.

  Args:
    learning_rate: η, a constant or an optax schedule.
    beta: momentum β in [0, 1) (authors: 0.95).
    b2: β₂ of the neuron-wise second moment in [0, 1) (authors: 0.95).
    nesterov: use the Nesterov form (authors: True).
    {family_args}
  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, normopt
    >>> params = {'w': jnp.ones((4, 3)), 'b': jnp.zeros(3)}
    >>> tx = normopt.normuon(0.02)
    >>> grads = {'w': jnp.arange(12.).reshape(4, 3), 'b': jnp.ones(3)}
    >>> u, _ = tx.update(grads, tx.init(params), params)
    >>> jax.tree.map(jnp.shape, u)
    {'b': (3,), 'w': (4, 3)}

  References:
    Li et al., *NorMuon: Making Muon more efficient and scalable*, arXiv
    2510.05491 (code ``zichongli5/NorMuon``).
  """
  check_in_range("b2", b2, 0.0, 1.0, high_inclusive=False)
  return _muon_family(
      "normuon", learning_rate, beta=beta, nesterov=nesterov,
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      ns_steps=ns_steps, ns_coeffs=ns_coeffs,
      preconditioning=preconditioning, eps=eps,
      consistent_rms=consistent_rms, adaptive=False, mu_dtype=mu_dtype,
      weight_dimension_numbers=weight_dimension_numbers, mask=mask,
      adam_learning_rate=adam_learning_rate, adam_b1=adam_b1,
      adam_b2=adam_b2, adam_weight_decay=adam_weight_decay, other=other,
      bias_correction=False, axis_name=axis_name, neuron_b2=b2)


_family_doc(normuon, drop=("adaptive", "bias_correction"))


def scion_norms(params, weight_dimension_numbers=None):
  """Scion's default ("Auto") norm per leaf: ``"spectral"`` for the leaves
  read as matrices (2-D leaves, and those with dimension numbers: dense,
  conv and attention kernels), ``"rms"`` for the rest (biases, scales; the
  reference's BiasRMS).

  Args:
    params: the params (any pytree of arrays).
    weight_dimension_numbers: as in :func:`scion`; a leaf with None there
      gets ``"rms"``.

  Returns:
    A tree like ``params`` of norm names for :func:`scion`.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> normopt.scion_norms({'w': jnp.ones((3, 2)), 'b': jnp.ones(2)})
    {'b': 'rms', 'w': 'spectral'}

  References:
    Pethick et al., *Training Deep Learning Models with Norm-Constrained
    LMOs*, ICML 2025 (reference code ``LIONS-EPFL/scion``, ``Auto``).
  """
  if weight_dimension_numbers is None:
    names = ["spectral" if jnp.ndim(p) == 2 else "rms"
             for p in jax.tree.leaves(params)]
  else:
    names = ["rms" if d is None else "spectral" for d in
             lmo.leaf_dimension_numbers(weight_dimension_numbers, params)]
  return jax.tree.structure(params).unflatten(names)


def _scion_factor(name: str, shape: tuple[int, ...], dims) -> float:
  """The reference's per-norm scale of the unit direction, Flax layout
  (``fan_in`` rows, ``fan_out`` columns; ``d_in`` the size of the last
  reduction axis and ``K`` the product of the other reduction axes, a conv
  kernel's taps): spectral ``sqrt(fan_out/d_in)/K`` (Spectral,
  SpectralConv), sign ``1/d_in`` (Sign), col ``1/sqrt(fan_in)`` (its
  RowNorm: each output unit's column), row ``sqrt(fan_out)`` (its ColNorm:
  each input unit's row), rms and l2 ``1`` (BiasRMS is the rms
  direction)."""
  if name in ("rms", "l2") or len(shape) < 2:
    return 1.0
  if dims is None and len(shape) != 2:  # sign needs no matrix view
    return 1.0 / shape[-2]
  axes = lmo.matrix_axes(shape, dims)
  fan_in, fan_out = lmo.fans(shape, axes)
  d_in = shape[axes.reduction[-1]]
  if name == "spectral":
    return math.sqrt(fan_out / d_in) / (fan_in // d_in)
  if name == "sign":
    return 1.0 / d_in
  if name == "col":
    return 1.0 / math.sqrt(fan_in)
  return math.sqrt(fan_out)  # row


def scion(learning_rate: ScalarOrSchedule, *, beta: float = 0.9,
          norms=None, radius=1.0, unconstrained: bool = False,
          ns_steps: int = 5, ns_coeffs: lmo.CoeffSpec = lmo.NS_COEFFS,
          weight_dimension_numbers=None, mu_dtype=None,
          axis_name: str | None = None) -> optax.GradientTransformation:
  r"""Scion: momentum through a norm-constrained LMO, a norm per layer.

  For each leaf :math:`X_l` with norm :math:`\|\cdot\|_l` and radius
  :math:`\rho_l`:

  .. math::
    d \leftarrow \beta d + (1 - \beta) g, \qquad
    X_l \leftarrow (1 - \gamma) X_l - \gamma \rho_l\, s_l\, u_l(d_l)
    \quad\text{(constrained; unconstrained: no } (1-\gamma)\text{)},

  with :math:`u_l` the unit-norm steepest direction of
  :func:`normalize_per_block` under the leaf's norm and :math:`s_l` the
  reference's shape scale, in Flax layout through the leaf's dimension
  numbers (``fan_in`` rows, ``fan_out`` columns, ``d_in`` the last
  reduction axis, ``K`` the product of the other reduction axes, a conv
  kernel's taps): ``"spectral"`` :math:`\sqrt{\text{fan}_{out}/d_{in}}/K`
  (Spectral / SpectralConv), ``"sign"`` :math:`1/d_{in}` (Sign), ``"col"``
  :math:`1/\sqrt{\text{fan}_{in}}` (the reference's RowNorm, per output
  unit), ``"row"`` :math:`\sqrt{\text{fan}_{out}}` (its ColNorm, per input
  unit), ``"rms"`` 1 (BiasRMS). Directions are exact at any gradient scale
  and computed in float32 or wider; the reference's ``1e-8`` in its
  divisions is omitted.

  Args:
    learning_rate: γ, a constant or an optax schedule.
    beta: momentum β in [0, 1); the reference's ``momentum`` is ``1 - β``
      (its recipes use 0.1, i.e. β = 0.9).
    norms: the norm of each leaf: a tree of names like the params or a
      callable on the params (default :func:`scion_norms`: spectral for
      the leaves read as matrices, rms for the rest; leaves of 3 or more
      dimensions without dimension numbers get rms, with a warning).
    radius: ρ, a number or a tree of numbers like the params (per layer
      group: e.g. 50 for hidden matrices and 3000 for the head in the
      reference's nanoGPT recipe).
    unconstrained: drop the constrained variant's ``(1 - γ)`` shrinkage
      (the reference's ``unconstrained``; default False, as there).
    ns_steps: Newton-Schulz iterations of the spectral norm.
    ns_coeffs: the iteration's ``(a, b, c)``, a table or a preset (see
      :func:`muon`).
    weight_dimension_numbers: the matrix view of each leaf, as in
      :func:`muon` (a conv kernel ``(kh, kw, in, out)`` is
      ``MuonDimensionNumbers((0, 1, 2), 3)``).
    mu_dtype: the momentum's dtype (default float32 or wider).
    axis_name: for norms that are sums over the leaf (``"rms"``,
      ``"sign"``); the matrix norms refuse it (gather the matrices, or use
      ``jit`` with sharded arrays).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.scion(0.1, norms={'w': 'sign', 'b': 'rms'},
    ...                    radius={'w': 2.0, 'b': 1.0}, unconstrained=True)
    >>> w = {'w': jnp.ones((4, 3)), 'b': jnp.zeros(3)}
    >>> u, _ = tx.update({'w': jnp.ones((4, 3)), 'b': jnp.ones(3)},
    ...                  tx.init(w), w)
    >>> round(float(u['w'][0, 0]), 6)  # -lr * radius * sign(d) / d_in
    -0.05

  References:
    Pethick, Xie, Erdogan, Antonakopoulos, Silveti-Falls, Cevher,
    *Training Deep Learning Models with Norm-Constrained LMOs*, ICML 2025,
    arXiv 2502.07529, Alg. 1-2 and Table 1 (reference code
    ``LIONS-EPFL/scion``).
  """
  check_non_negative("learning_rate", learning_rate)
  check_in_range("beta", beta, 0.0, 1.0, high_inclusive=False)
  dims = weight_dimension_numbers

  def names_of(tree):
    if norms is None:
      return scion_norms(tree, dims)
    return norms(tree) if callable(norms) else norms

  def scale(updates, params=None):
    del params
    names = jax.tree.leaves(names_of(updates))
    leaves, treedef = jax.tree.flatten(updates)
    per_leaf = lmo.leaf_dimension_numbers(dims, updates)
    radii = ([radius] * len(leaves)
             if jax.tree_util.treedef_is_leaf(jax.tree.structure(radius))
             else treedef.flatten_up_to(radius))
    for r in radii:
      check_non_negative("radius", r)
    return treedef.unflatten([
        u * jnp.asarray(r * _scion_factor(n, u.shape, d), u.dtype)
        for u, n, r, d in zip(leaves, names, radii, per_leaf)])

  tx = optax.chain(
      _float_updates(),
      _in_float32(optax.chain(
          heavy_ball(beta, ema=True, mu_dtype=mu_dtype),
          normalize_per_block(norm=names_of, ns_steps=ns_steps,
                              ns_coeffs=ns_coeffs,
                              weight_dimension_numbers=dims,
                              axis_name=axis_name))),
      optax.stateless(scale),
      optax.add_decayed_weights(0.0 if unconstrained else 1.0),
      optax.scale_by_learning_rate(learning_rate),
  )

  def init_fn(params):
    if norms is None and dims is None:
      _warn_ambiguous_leaves(
          "scion", params, [jnp.ndim(p) >= 3 for p in jax.tree.leaves(params)],
          "get the rms norm", "to give them the spectral norm")
    return tx.init(params)

  return optax.GradientTransformation(init_fn, tx.update)
