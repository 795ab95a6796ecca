"""Checking that data-parallel replicas agree."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def assert_replicated(tree: Any, *, stacked: bool = False,
                      what: str = "params") -> None:
  """Raises if the device copies of any leaf of ``tree`` differ, bitwise.

  Data-parallel training keeps one copy of the params per device; they stay
  identical only if every replica applies the same update, i.e. gradients
  (and CLARS's per-example norms) are averaged *before* the optimizer.
  Normalizing per replica and averaging afterwards, or forgetting the
  ``pmean``, makes the copies drift apart; call this on the outputs of a
  step (cheap enough for every few hundred steps) to catch it.

  Args:
    tree: ``jax.Array`` s whose sharding replicates data over some devices
      (e.g. ``NamedSharding(mesh, PartitionSpec())`` under ``jit``): shards
      holding the same index are compared; or, with ``stacked=True``,
      ``pmap`` outputs: the slices along axis 0 are compared.
    stacked: the leaves hold one copy per replica along axis 0.
    what: a name for the tree, used in the error message.

  Raises:
    AssertionError: naming the first leaf whose copies differ and by how
      much.

  Example:
    >>> import jax, jax.numpy as jnp, normopt
    >>> w = jax.pmap(lambda x: x * 0 + 1.0)(jnp.zeros(jax.local_device_count()))
    >>> normopt.assert_replicated({'w': w}, stacked=True)
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    copies: dict[str, list[np.ndarray]] = {}
    if stacked:
      copies["all"] = list(np.asarray(leaf))
    elif isinstance(leaf, jax.Array):
      for s in leaf.addressable_shards:
        copies.setdefault(str(s.index), []).append(np.asarray(s.data))
    for group in copies.values():
      first = group[0]
      for other in group[1:]:
        if first.tobytes() != other.tobytes():
          diff = np.max(np.abs(first.astype(np.float64)
                               - other.astype(np.float64)))
          raise AssertionError(
              f"{what}{jax.tree_util.keystr(path)} differs across replicas "
              f"(max |difference| {diff:.3g}): average the gradients (and "
              "CLARS norms) over the data axis before the optimizer update")
