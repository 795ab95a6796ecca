"""Random pytrees of mixed shapes and conversions to float64 NumPy blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = {"dense": {"kernel": (4, 3), "bias": (3,)}, "scale": (),
          "conv": (2, 3, 2), "head": (5,)}


def random_tree(rng: np.random.Generator, dtype="float32", scale=1.0,
                shapes=SHAPES):
  return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s), dtype),
      shapes, is_leaf=lambda s: isinstance(s, tuple))


def blocks(tree) -> list[np.ndarray]:
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def from_blocks(like, values):
  return jax.tree.unflatten(jax.tree.structure(like), list(values))


def assert_tree_matches(tree, expected_blocks, rtol, atol=0.0):
  """Each leaf within ``rtol`` of the reference, elementwise, with an
  absolute slack of ``rtol`` times the leaf's largest reference value (so an
  element that cancels to ~0 is judged against its block's scale)."""
  got = blocks(tree)
  assert len(got) == len(expected_blocks)
  for g, e in zip(got, expected_blocks):
    e = np.asarray(e, np.float64)
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    np.testing.assert_allclose(g, e, rtol=rtol, atol=max(atol, rtol * scale))


def rtol_for(precision: str) -> float:
  """The agreement asked of float32 runs (1e-5) and of x64 runs (1e-12)."""
  return 1e-12 if precision == "float64" else 1e-5


def tol(precision: str) -> dict:
  """rtol as above, with an absolute floor for elements that cancel to ~0
  in O(1) data (f32 rounding over 50 steps is ~1e-7 absolute)."""
  return {"rtol": rtol_for(precision),
          "atol": 1e-14 if precision == "float64" else 1e-6}


def run_updates(tx, grads):
  """Feeds ``grads`` through ``tx`` (jitted); returns the outputs and the
  final state."""
  state = tx.init(grads[0])
  update = jax.jit(tx.update)
  outs = []
  for g in grads:
    u, state = update(g, state)
    outs.append(u)
  return outs, state
