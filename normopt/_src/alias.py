"""The papers' methods, each a short ``optax.chain`` of normopt primitives."""

from __future__ import annotations

import math
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
    numerics.check_float_leaves(jax.tree.leaves(updates))
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
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
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
  return optax.chain(
      heavy_ball(beta, ema=True),
      normalize_per_block(norm="sign", axis_name=axis_name),
      optax.scale_by_learning_rate(learning_rate),
  )


def hidden_matrices(params):
  """The default Muon mask: True for leaves with two or more dimensions.

  Dense and conv kernels are orthogonalized; biases, scales and other
  vectors go to Muon's other transformation. Embedding tables and the
  output head are matrices too, which the reference sends to Adam: pass
  your own mask for them.

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
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _in_float32(inner: optax.GradientTransformation
                ) -> optax.GradientTransformation:
  """``inner`` run on float32 (or wider) copies of the updates and params,
  its output cast back to each leaf's dtype (Adam's ``eps`` and squares
  underflow in float16)."""
  def up_one(x):
    dtype = numerics.accumulation_dtype(x.dtype)
    if isinstance(x, jax.ShapeDtypeStruct):  # abstract init
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return jnp.asarray(x).astype(dtype)

  def up(tree):
    return jax.tree.map(up_one, tree)

  def init_fn(params):
    return inner.init(up(params))

  def update_fn(updates, state, params=None):
    out, state = inner.update(up(updates), state,
                              None if params is None else up(params))
    return jax.tree.map(lambda o, u: o.astype(u.dtype), out, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _scale_by_shape_factor() -> optax.GradientTransformation:
  """Each leaf times Muon's ``sqrt(max(1, d_out / d_in))``."""
  return optax.stateless_with_tree_map(
      lambda u, _: u * jnp.asarray(lmo.shape_factor(u), u.dtype))


class BiasCorrectedMomentumState(NamedTuple):
  """State of Muon's ``bias_correction=True`` momentum: the step count and
  the (uncorrected) EMA of the gradients."""
  count: jax.Array
  mu: optax.Updates


def _bias_corrected_momentum(beta: float, nesterov: bool
                             ) -> optax.GradientTransformation:
  """optax.contrib.scale_by_muon's momentum: the EMA ``m`` bias-corrected,
  ``β m̂_{t+1} + (1-β) ĝ_t`` with Nesterov (``m̂``: divided by
  ``1-β^{t+1}``, ``ĝ``: by ``1-β^t``), else ``m / (1-β^t)``."""
  def init_fn(params):
    return BiasCorrectedMomentumState(jnp.zeros((), jnp.int32),
                                      optax.tree.zeros_like(params))

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
    return out, BiasCorrectedMomentumState(count, mu)

  return optax.GradientTransformation(init_fn, update_fn)


def muon(learning_rate: ScalarOrSchedule, *, beta: float = 0.95,
         nesterov: bool = True, weight_decay: float = 0.0,
         ns_steps: int = 5,
         ns_coeffs: tuple[float, float, float] = lmo.NS_COEFFS,
         eps: float = 0.0, mask: Mask = None,
         other: optax.GradientTransformation | None = None,
         bias_correction: bool = False,
         axis_name: str | None = None) -> optax.GradientTransformation:
  r"""Muon: momentum orthogonalized by Newton-Schulz, on hidden matrices.

  For each matrix leaf ``W`` (Flax layout ``(d_in, d_out)``; a conv kernel
  ``(kh, kw, in, out)`` viewed as ``(kh·kw·in, out)``):

  .. math::
    m_{t+1} = \beta m_t + (1-\beta) g_t, \quad
    u = (1-\beta) g_t + \beta m_{t+1}\ \text{(Nesterov; else } u = m_{t+1}),

    W \leftarrow (1 - \eta\lambda) W - \eta \sqrt{\max(1, d_{out}/d_{in})}\,
    \mathrm{NS}(u),

  with ``NS`` the quintic Newton-Schulz iteration started from
  ``u / ‖u‖_F`` (``normalize_per_block(norm="spectral")``: exact at any
  gradient scale, computed in float32 or wider). Leaves outside ``mask`` go
  through ``other``.

  Differences from ``optax.contrib.muon``: the momentum is not
  bias-corrected (Jordan et al.'s reference does not; optax's is, so the two
  differ in early steps), the pre-scale divides by the exact Frobenius norm
  (optax adds ``eps = 1e-8``, which changes the update at small gradient
  scales and zeroes it at large ones), and conv kernels are orthogonalized
  by default (optax sends leaves with more than two dimensions to Adam).

  Args:
    learning_rate: η, a constant or an optax schedule (applied to the
      matrices; ``other`` has its own).
    beta: momentum β in [0, 1) (reference: 0.95).
    nesterov: use the Nesterov form (reference: True).
    weight_decay: decoupled weight decay λ of the matrices (the step
      multiplies them by ``1 - ηλ``).
    ns_steps: Newton-Schulz iterations.
    ns_coeffs: the iteration's ``(a, b, c)``.
    eps: added to the Frobenius norm of the pre-scale.
    mask: which leaves are orthogonalized: a tree of bools or a callable on
      the params (default :func:`hidden_matrices`, every leaf with two or
      more dimensions); ``True`` for every leaf.
    other: the transformation for the remaining leaves, a complete
      optimizer including its learning rate (default
      ``optax.adamw(learning_rate, b1=0.9, b2=0.95, eps=1e-10,
      weight_decay=weight_decay)`` computed in float32 whatever the leaf
      dtype, the reference's Adam settings at Muon's learning rate; pass
      your own for the reference's separate Adam rate).
    bias_correction: bias-correct the momentum as
      ``optax.contrib.scale_by_muon`` does (its momentum, for parity with
      optax; the reference does not, so early steps differ).
    axis_name: orthogonalization needs each matrix whole, so a mapped axis
      over which the leaves are shards is refused with a ``ValueError``;
      gather the matrices first, or use ``jit`` with sharded arrays (GSPMD
      computes on the logical matrix, tested).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, normopt, optax
    >>> tx = normopt.muon(0.02)
    >>> params = {'w': jnp.ones((4, 3)), 'b': jnp.zeros(3)}
    >>> grads = {'w': jnp.arange(12.).reshape(4, 3), 'b': jnp.ones(3)}
    >>> u, _ = tx.update(grads, tx.init(params), params)
    >>> jax.tree.map(jnp.shape, u)
    {'b': (3,), 'w': (4, 3)}

  References:
    Jordan, Jin, Boza, You, Cesista, Newhouse, Bernstein, *Muon: An
    optimizer for hidden layers in neural networks*, 2024 (reference code
    ``KellerJordan/Muon``);
    Pethick et al., *Training Deep Learning Models with Norm-Constrained
    LMOs*, ICML 2025, Table 1.
  """
  check_non_negative("learning_rate", learning_rate)
  check_in_range("beta", beta, 0.0, 1.0, high_inclusive=False)
  check_non_negative("weight_decay", weight_decay)
  momentum = (_bias_corrected_momentum(beta, nesterov) if bias_correction
              else heavy_ball(beta, ema=True, nesterov=nesterov))
  matrices = optax.chain(
      momentum,
      normalize_per_block(norm="spectral", eps=eps, ns_steps=ns_steps,
                          ns_coeffs=ns_coeffs, axis_name=axis_name),
      _scale_by_shape_factor(),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
  if other is None:
    other = _in_float32(optax.adamw(learning_rate, b1=0.9, b2=0.95, eps=1e-10,
                                    weight_decay=weight_decay))
  if mask is True:
    return optax.chain(_float_updates(), matrices)
  chosen = hidden_matrices if mask is None else mask

  def labels(params):
    flags = chosen(params) if callable(chosen) else chosen
    return jax.tree.map(lambda f: "muon" if f else "other", flags)

  return optax.chain(_float_updates(), optax.multi_transform(
      {"muon": matrices, "other": other}, labels))


def scion_norms(params):
  """Scion's default ("Auto") norm per leaf: ``"spectral"`` for leaves with
  two or more dimensions (dense and conv kernels), ``"rms"`` for the rest
  (biases, scales; the reference's BiasRMS).

  Args:
    params: the params (any pytree of arrays).

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
  return jax.tree.map(lambda p: "spectral" if jnp.ndim(p) >= 2 else "rms",
                      params)


def _scion_factor(name: str, shape: tuple[int, ...]) -> float:
  """The reference's per-norm scale of the unit direction, Flax layout
  (a kernel ``(..., d_in, d_out)``; ``K`` the product of a conv kernel's
  spatial sizes): spectral ``sqrt(d_out/d_in)/K`` (Spectral, SpectralConv),
  sign ``1/d_in`` (Sign), col ``1/sqrt(rows)`` (its RowNorm: each output
  unit's column), row ``sqrt(cols)`` (its ColNorm: each input unit's row),
  rms and l2 ``1`` (BiasRMS is the rms direction)."""
  if name == "spectral":
    return math.sqrt(shape[-1] / shape[-2]) / math.prod(shape[:-2])
  if name == "sign":
    return 1.0 / shape[-2] if len(shape) >= 2 else 1.0
  if name == "col":
    return 1.0 / math.sqrt(math.prod(shape[:-1]))
  if name == "row":
    return math.sqrt(shape[-1])
  return 1.0


def scion(learning_rate: ScalarOrSchedule, *, beta: float = 0.9,
          norms=None, radius=1.0, unconstrained: bool = False,
          ns_steps: int = 5,
          ns_coeffs: tuple[float, float, float] = lmo.NS_COEFFS,
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
  reference's shape scale (Flax layout ``(..., d_in, d_out)``, ``K`` the
  product of a conv kernel's spatial sizes): ``"spectral"``
  :math:`\sqrt{d_{out}/d_{in}}/K` (Spectral / SpectralConv), ``"sign"``
  :math:`1/d_{in}` (Sign), ``"col"`` :math:`1/\sqrt{\text{rows}}` (the
  reference's RowNorm, per output unit), ``"row"``
  :math:`\sqrt{\text{cols}}` (its ColNorm, per input unit), ``"rms"`` 1
  (BiasRMS). Directions are exact at any gradient scale and computed in
  float32 or wider; the reference's ``1e-8`` in its divisions is omitted.

  Args:
    learning_rate: γ, a constant or an optax schedule.
    beta: momentum β in [0, 1); the reference's ``momentum`` is ``1 - β``
      (its recipes use 0.1, i.e. β = 0.9).
    norms: the norm of each leaf: a tree of names like the params or a
      callable on the params (default :func:`scion_norms`).
    radius: ρ, a number or a tree of numbers like the params (per layer
      group: e.g. 50 for hidden matrices and 3000 for the head in the
      reference's nanoGPT recipe).
    unconstrained: drop the constrained variant's ``(1 - γ)`` shrinkage
      (the reference's ``unconstrained``; default False, as there).
    ns_steps: Newton-Schulz iterations of the spectral norm.
    ns_coeffs: the iteration's ``(a, b, c)``.
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
  chosen = scion_norms if norms is None else norms

  def names_of(tree):
    return chosen(tree) if callable(chosen) else chosen

  def scale(updates, params=None):
    del params
    names = jax.tree.leaves(names_of(updates))
    leaves, treedef = jax.tree.flatten(updates)
    radii = ([radius] * len(leaves)
             if jax.tree_util.treedef_is_leaf(jax.tree.structure(radius))
             else treedef.flatten_up_to(radius))
    for r in radii:
      check_non_negative("radius", r)
    return treedef.unflatten([
        u * jnp.asarray(r * _scion_factor(n, u.shape), u.dtype)
        for u, n, r in zip(leaves, names, radii)])

  return optax.chain(
      _float_updates(),
      heavy_ball(beta, ema=True),
      normalize_per_block(norm=names_of, ns_steps=ns_steps,
                          ns_coeffs=ns_coeffs, axis_name=axis_name),
      optax.stateless(scale),
      optax.add_decayed_weights(0.0 if unconstrained else 1.0),
      optax.scale_by_learning_rate(learning_rate),
  )
