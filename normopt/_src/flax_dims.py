"""Muon's matrix view of every parameter of a Flax NNX model.

Flax is not a dependency of normopt: it is imported when the helper runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import jax
from optax.contrib import MuonDimensionNumbers


def _key(k) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return k


def _layer_dims(module, nnx) -> dict[str, MuonDimensionNumbers | None]:
  """The dimension numbers of a known layer's params, by attribute name."""
  if isinstance(module, nnx.Embed):
    return {"embedding": None}
  if isinstance(module, nnx.Linear):
    return {"kernel": MuonDimensionNumbers(0, 1), "bias": None}
  if isinstance(module, nnx.LinearGeneral):
    nb, nin = len(module.batch_axis), len(module.in_features)
    nout = len(module.out_features)
    return {"kernel": MuonDimensionNumbers(
        tuple(range(nb, nb + nin)), tuple(range(nb + nin, nb + nin + nout))),
        "bias": None}
  if isinstance(module, nnx.ConvTranspose):
    n = module.kernel.ndim
    if getattr(module, "transpose_kernel", False):  # (k..., out, in)
      dims = MuonDimensionNumbers((*range(n - 2), n - 1), n - 2)
    else:
      dims = MuonDimensionNumbers(tuple(range(n - 1)), n - 1)
    return {"kernel": dims, "bias": None}
  if isinstance(module, nnx.Conv):  # (k..., in / groups, out)
    n = module.kernel.ndim
    return {"kernel": MuonDimensionNumbers(tuple(range(n - 1)), n - 1),
            "bias": None}
  return {}


def flax_weight_dimension_numbers(
    model, *, exclude: Collection[str] | Callable[[str], bool] = ()):
  r"""The tree of :class:`optax.contrib.MuonDimensionNumbers` for a Flax NNX
  model, for ``weight_dimension_numbers`` of :func:`muon`,
  :func:`normuon`, :func:`scion` and :func:`normalize_per_block` (and
  optax's ``muon_weight_dimension_numbers``).

  Each ``nnx.Param`` gets the view of the layer that owns it, ``(fan_in,
  fan_out)`` as in ``y = x W``:

  ======================================  ===================================
  layer (kernel shape)                    matrix view
  ======================================  ===================================
  ``nnx.Linear`` ``(in, out)``            ``(in, out)``: ``MDN(0, 1)``
  ``nnx.LinearGeneral`` (batch, in, out)  in axes × out axes, batch axes
                                          separate (``batch_axis``)
  attention q/k/v ``(in, heads, dh)``     ``(in, heads·dh)``: ``MDN(0, (1, 2))``
  attention out ``(heads, dh, out)``      ``(heads·dh, out)``: ``MDN((0, 1), 2)``
  ``nnx.Conv`` ``(kh, kw, in, out)``      ``(kh·kw·in, out)``
  ``nnx.ConvTranspose``                   likewise (``transpose_kernel``:
                                          ``(k..., out, in)`` read as such)
  ``nnx.Embed``, biases, norm scales      None (the other optimizer)
  another module's 2-D ``kernel``         ``(in, out)``
  any other param                         None
  ======================================  ===================================

  The q/k/v view is the PyTorch reference's: a ``Linear(d, heads·dh)``
  orthogonalized whole. The output layer is a matrix like any other; the
  reference sends it to Adam: name it in ``exclude``.

  Args:
    model: a Flax NNX module.
    exclude: names of attributes or submodules (any element of a param's
      path, such as ``"head"``) whose params get None, or a callable on the
      path string (``jax.tree_util.keystr`` form) returning True for them.

  Returns:
    A tree shaped like ``nnx.state(model, nnx.Param)`` with a
    ``MuonDimensionNumbers`` or None where each param is; pass it as is
    (``nnx.Optimizer(model, normopt.muon(lr, weight_dimension_numbers=...),
    wrt=nnx.Param)``).

  Example:
    >>> from flax import nnx
    >>> import normopt
    >>> attention = nnx.MultiHeadAttention(4, 32, decode=False,
    ...                                    rngs=nnx.Rngs(0))
    >>> dims = normopt.flax_weight_dimension_numbers(attention)
    >>> dims['query']['kernel']
    MuonDimensionNumbers(reduction_axis=(0,), output_axis=(1, 2))
    >>> dims['out']['kernel']
    MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=(2,))
    >>> print(dims['query']['bias'])
    None

  References:
    Jordan et al., *Muon: An optimizer for hidden layers in neural
    networks*, 2024; optax ``optax.contrib.muon``
    (``muon_weight_dimension_numbers``).
  """
  from flax import nnx

  known: dict[tuple, MuonDimensionNumbers | None] = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Module):
      for name, dims in _layer_dims(node, nnx).items():
        known[(*path, name)] = dims

  def excluded(path, keys) -> bool:
    if callable(exclude):
      return bool(exclude(jax.tree_util.keystr(path)))
    return bool(set(exclude) & {str(k) for k in keys})

  def pick(path, variable):
    keys = tuple(_key(k) for k in path)
    if excluded(path, keys):
      return None
    if keys in known:
      return known[keys]
    if keys and keys[-1] == "kernel" and variable[...].ndim == 2:
      return MuonDimensionNumbers(0, 1)
    return None

  state = nnx.state(model, nnx.Param)
  return jax.tree_util.tree_map_with_path(
      pick, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
