"""Every normopt method, with settings that train the digits problem, and
the extra arguments its ``update`` needs."""

from __future__ import annotations

import jax

import normopt
from normopt._src import numerics

# name -> (factory, keyword arguments used by the shared suite)
ALIASES = {
    "sngm": (normopt.sngm, dict(learning_rate=0.05, beta=0.9)),
    "sngd": (normopt.sngd, dict(learning_rate=0.2)),
    "block_sngm": (normopt.block_sngm, dict(learning_rate=0.05, beta=0.9)),
    "lars": (normopt.lars, dict(learning_rate=1.0, momentum=0.9,
                                trust_coefficient=0.01)),
    "clars": (normopt.clars, dict(learning_rate=5.0, momentum=0.9,
                                  trust_coefficient=0.01)),
    "lamb": (normopt.lamb, dict(learning_rate=0.02)),
    "normalized_sgdm": (normopt.normalized_sgdm,
                        dict(learning_rate=0.1, beta=0.9)),
    "nigt": (normopt.nigt, dict(learning_rate=0.1, beta=0.9)),
    "adaptive_nigt": (normopt.adaptive_nigt,
                      dict(learning_rate=1.0, gradient_bound=1.0)),
    "qhm": (normopt.qhm, dict(learning_rate=0.5, beta=0.9, nu=0.7)),
    "nshb": (normopt.nshb, dict(learning_rate=0.5, beta=0.9)),
    "snag": (normopt.snag, dict(learning_rate=0.5, beta=0.9)),
    "signum": (normopt.signum, dict(learning_rate=0.01, beta=0.9)),
    "muon": (normopt.muon, dict(learning_rate=0.05, beta=0.95)),
    "normuon": (normopt.normuon, dict(learning_rate=0.05, beta=0.95)),
    # unconstrained: the constrained variant shrinks the params by (1 - lr)
    # every step, a weight decay of 1 (the suite expects zero steps for zero
    # gradients); test_lmo checks the constrained one against the reference
    "scion": (normopt.scion, dict(learning_rate=0.05, beta=0.9,
                                  unconstrained=True)),
}


def make(name, **overrides):
  factory, kwargs = ALIASES[name]
  return factory(**{**kwargs, **overrides})


def extra_args(name, grads, params, second_grads=None, example_norms=None):
  """The extra ``update`` arguments a method needs (empty for most)."""
  del params
  if name == "clars":
    if example_norms is None:  # a valid stand-in: the block norms of g
      example_norms = jax.tree.map(lambda g: numerics.global_norm([g]), grads)
    return {"per_example_norms": example_norms}
  if name == "adaptive_nigt":
    if second_grads is None:
      second_grads = jax.tree.map(lambda g: 0.9 * g, grads)
    return {"second_grads": second_grads}
  return {}
