"""Blocks: which leaves of a tree are normalized (or trust-ratioed) together.

A block specification is ``None`` (one block per leaf, i.e. one per layer
tensor), a pytree of hashable labels with the structure of the params (leaves
with equal labels form one block, e.g. one per Flax module), or a callable
mapping the params to such a tree (like ``optax.multi_transform``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

BlockSpec = Union[None, Any, Callable[[Any], Any]]


class Blocks(NamedTuple):
  """Leaves grouped into blocks, resolved once per trace (static Python)."""
  groups: list[list[int]]
  labels: list[Any] | None  # None: one block per leaf


def resolve(spec: BlockSpec, tree) -> Blocks:
  """Groups the leaves of ``tree`` (in ``jax.tree.leaves`` order) by ``spec``."""
  n = len(jax.tree.leaves(tree))
  if spec is None:
    return Blocks([[i] for i in range(n)], None)
  label_tree = spec(tree) if callable(spec) else spec
  labels = jax.tree.leaves(label_tree)
  if len(labels) != n:
    raise ValueError(
        f"blocks must give one label per leaf: got {len(labels)} labels for "
        f"{n} leaves")
  order: dict[Any, list[int]] = {}
  for i, label in enumerate(labels):
    order.setdefault(label, []).append(i)
  return Blocks(list(order.values()), list(order.keys()))


def to_tree(blocks: Blocks, values, tree):
  """Per-block values as a tree: like ``tree`` for per-leaf blocks, else a
  dict from label to value."""
  values = list(values)
  if blocks.labels is None:
    return jax.tree.unflatten(jax.tree.structure(tree), values)
  return dict(zip(blocks.labels, values))


def filled(spec: BlockSpec, params, value: float, dtype):
  """A block tree (see :func:`to_tree`) holding the scalar ``value``."""
  resolved = resolve(spec, params)
  scalar = jnp.full((), value, dtype)
  return to_tree(resolved, [scalar] * len(resolved.groups), params)


def from_tree(blocks: Blocks, block_tree) -> list:
  """The inverse of :func:`to_tree`: per-block values in group order."""
  if blocks.labels is None:
    return jax.tree.leaves(block_tree)
  return [block_tree[label] for label in blocks.labels]


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def drop_masked(tree, like):
  """``tree`` with ``optax.MaskedNode`` wherever ``like`` has one.

  Inside ``optax.masked`` the updates and params hold ``MaskedNode`` for the
  masked-out leaves but extra ``update`` arguments (CLARS's norms, adaptive
  NIGT's second gradient) arrive whole; this drops the same entries from
  them. A ``tree`` that is not shaped like ``like`` is returned unchanged.
  """
  flags, treedef = jax.tree.flatten(like, is_leaf=_is_masked)
  if tree is None or not any(_is_masked(f) for f in flags):
    return tree
  try:
    entries = treedef.flatten_up_to(tree)
  except (ValueError, TypeError):
    return tree
  return jax.tree.unflatten(treedef, [f if _is_masked(f) else e
                                      for f, e in zip(flags, entries)])
