"""One way to read what a normopt chain did at its last step."""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import optax

from normopt._src.adaptive_nigt import AdaptiveNigtState
from normopt._src.base import find_states
from normopt._src.noise_scale import NoiseScaleState
from normopt._src.normalize import NormalizeGlobalState, NormalizePerBlockState
from normopt._src.trust import TrustRatioState

# The meaning of TrustRatioState.status codes, by code.
TRUST_STATUS = ("scaled", "masked_out", "zero_weight_norm", "zero_denominator")

_STATES = (NormalizeGlobalState, NormalizePerBlockState, TrustRatioState,
           AdaptiveNigtState, NoiseScaleState)


# optax.inject_hyperparams states (the stateful one is what it returns now).
_INJECTED = tuple(t for t in (
    optax.InjectHyperparamsState,
    getattr(optax, "InjectStatefulHyperparamsState", None)) if t is not None)


def telemetry(opt_state: Any, *, learning_rate: Any = None) -> dict[str, Any]:
  r"""The per-block norms, trust ratios and effective learning rates of a chain.

  Finds every normopt link's state inside ``opt_state`` (nested chains,
  ``optax.masked``, ``optax.MultiSteps`` and ``optax.inject_hyperparams``
  included) and returns a flat dict of arrays, ready to log every step
  under ``jit``. Keys are ``"<link>_<k>"``, ``k`` counting links of one
  kind in chain order:

  * ``normalize_global_k``: ``{"norm"}``, the last global norm;
  * ``normalize_per_block_k``: ``{"norms"}``, one per block;
  * ``trust_ratio_k``: ``{"ratios", "status"}`` per block, and
    ``"effective_learning_rate"`` (learning rate × ratio) when a learning
    rate is known; ``status`` codes index :data:`TRUST_STATUS`
    (scaled, masked out, zero weight norm, zero denominator), which says
    which leaves the link skipped and why;
  * ``adaptive_nigt_k``: ``{"variance_sum"}``, the running :math:`G_t`;
  * ``noise_scale_k``: ``{"simple", "block_simple"}``, the tracked
    :math:`B_\text{simple}`, globally and per block
    (:func:`track_noise_scale`).

  Args:
    opt_state: the state of a normopt method or any chain holding normopt
      links.
    learning_rate: the learning rate the chain used at this step; by
      default the ``learning_rate`` of an ``optax.inject_hyperparams``
      state found in ``opt_state``, else none.

  Returns:
    A dict of dicts of plain arrays (a pytree); Flax NNX wrappers (an
    ``nnx.Optimizer``'s ``opt_state``) are unwrapped and NNX ``State``
    trees become dicts.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> w = {'k': jnp.full((2, 2), 2.), 'b': jnp.ones(2)}
    >>> tx = normopt.lars(0.5, trust_coefficient=1.0, mask=None)
    >>> _, state = tx.update(w, tx.init(w), w)
    >>> info = normopt.telemetry(state, learning_rate=0.5)
    >>> [normopt.TRUST_STATUS[int(s)] for s in info['trust_ratio_0']['status'].values()]
    ['masked_out', 'scaled']
    >>> float(info['trust_ratio_0']['effective_learning_rate']['k'])
    0.5
  """
  opt_state = _without_nnx_wrappers(opt_state)
  if learning_rate is None:
    for s in find_states(opt_state, _INJECTED):
      learning_rate = s.hyperparams.get("learning_rate", learning_rate)
  states = find_states(opt_state, _STATES)
  out: dict[str, Any] = {}
  seen: dict[str, int] = {}

  def add(kind, value):
    k = seen.get(kind, 0)
    seen[kind] = k + 1
    out[f"{kind}_{k}"] = value

  for s in states:
    if isinstance(s, NormalizeGlobalState):
      add("normalize_global", {"norm": s.norm})
    elif isinstance(s, NormalizePerBlockState):
      add("normalize_per_block", {"norms": s.norms})
    elif isinstance(s, TrustRatioState):
      entry = {"ratios": s.ratios, "status": s.status}
      if learning_rate is not None:
        entry["effective_learning_rate"] = jax.tree.map(
            lambda r: learning_rate * r, s.ratios)
      add("trust_ratio", entry)
    elif isinstance(s, AdaptiveNigtState):
      add("adaptive_nigt", {"variance_sum": s.current_g})
    elif isinstance(s, NoiseScaleState):
      add("noise_scale", {"simple": s.trace / s.grad_sq,
                          "block_simple": jax.tree.map(
                              jnp.divide, s.block_trace, s.block_grad_sq)})
  return _without_nnx_wrappers(out, dicts=True)


def _without_nnx_wrappers(tree, dicts: bool = False):
  """``tree`` with Flax NNX variables (an ``nnx.Optimizer``'s
  ``OptVariable``/``OptArray``) replaced by their arrays, and with
  ``dicts`` its ``nnx.State`` containers by plain dicts. Flax is not
  imported: a tree can only hold NNX types if the user already has."""
  nnx = sys.modules.get("flax.nnx")
  if nnx is None:
    return tree
  tree = nnx.as_pure(tree)
  if not dicts:
    return tree
  return jax.tree.map(
      lambda x: nnx.to_pure_dict(x) if isinstance(x, nnx.State) else x,
      tree, is_leaf=lambda x: isinstance(x, nnx.State))
