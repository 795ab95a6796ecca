r"""Norm probes: per-example gradient norms without per-example gradients.

A *probe* is a zero vector of length ``B`` (the batch size) attached to a
parameter. A probed layer computes its ordinary output and ignores the probe
in the forward pass; in the backward pass it writes, as the probe's
cotangent, each example's norm of that parameter's gradient. So one
``jax.grad`` of the loss with respect to ``(params, probes)`` gives the mean
gradient *and* every per-example gradient norm, at about the cost of one
ordinary backward pass.

For a dense layer ``y = x W`` the per-example gradient is
:math:`\nabla_W f_i = a_i^\top \delta_i` with :math:`a_i` the example's
inputs (``T x in``, ``T`` positions such as tokens or convolution patches)
and :math:`\delta_i` the output cotangents (``T x out``). Its squared norm is

* :math:`\|a_i\|^2 \|\delta_i\|^2` when ``T = 1`` (an outer product);
* :math:`\langle a_i a_i^\top, \delta_i \delta_i^\top \rangle` (two ``T x T``
  Gram matrices) when that is cheaper than forming :math:`a_i^\top
  \delta_i`, i.e. when ``T (in + out) <= in * out``;
* otherwise :math:`\|a_i^\top \delta_i\|^2` from one layer's per-example
  gradient (``B x in x out``, freed right after).

A convolution written as patches (unfold / im2col) followed by a dense
kernel gets the same identity with ``T`` = output positions. Any other layer
can be wrapped with :func:`probed`, which takes the per-example gradients of
that layer alone (``vmap`` of its ``vjp``).

Norms are accumulated in float32 or wider. A probed layer computes them
plainly (its sums of squares can overflow or underflow at extreme gradient
scales); :func:`normopt.per_example_block_norms` checks the result and, only
when a block's norm is not finite or too small, redoes the pass with
probes made with ``safe=True`` (exact, rescaled norms).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from normopt._src import numerics


@jax.tree_util.register_pytree_node_class
class NormProbe:
  """A probe: a ``(B,)`` vector whose cotangent receives per-example norms.

  ``safe`` (static, part of the tree structure) tells the probed layers to
  compute those norms overflow-safe; :func:`normopt.per_example_block_norms`
  sets it when it redoes a pass whose plain norms overflowed, so the mode
  travels with the probes instead of in a global. Indexing a probe indexes
  its vector (as ``nnx.Variable[...]`` does).
  """

  __slots__ = ("safe", "value")

  def __init__(self, value, safe: bool = False):
    self.value = value
    self.safe = safe

  @property
  def shape(self):
    return self.value.shape

  def __getitem__(self, key):
    return NormProbe(self.value[key], self.safe)

  def __repr__(self):
    return f"NormProbe({self.value!r}, safe={self.safe})"

  def tree_flatten(self):
    return (self.value,), self.safe

  @classmethod
  def tree_unflatten(cls, safe, children):
    return cls(children[0], safe)


def _unwrap(probe) -> tuple[Any, bool]:
  """A probe's vector and mode (a plain vector is a plain-mode probe)."""
  if isinstance(probe, NormProbe):
    return probe.value, probe.safe
  return probe, False


def _is_probe(x) -> bool:
  return isinstance(x, NormProbe)


def norm_probes(params: Any, batch_size: int, *, safe: bool = False) -> Any:
  """Zero probes, one :class:`NormProbe` of length ``batch_size`` per leaf.

  Args:
    params: the params (any pytree of arrays).
    batch_size: the number of examples ``B`` in the batch.
    safe: whether probed layers compute the norms overflow-safe (slower;
      :func:`normopt.per_example_block_norms` uses it only to redo a pass
      whose plain norms overflowed or underflowed).

  Returns:
    A tree like ``params`` of probes holding float32 (float64 for float64
    leaves) zeros of shape ``(batch_size,)``. The gradient of a loss with
    respect to them is a tree of the same probes holding each example's
    gradient norm (read it with ``jax.tree.leaves`` or ``.value``).

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> normopt.norm_probes({'w': jnp.ones((3, 2))}, 4)['w'].shape
    (4,)
  """
  return jax.tree.map(
      lambda p: NormProbe(jnp.zeros(
          (batch_size,), numerics.accumulation_dtype(p.dtype)), safe),
      params)


def _rows(x, batch: int):
  """``x`` as ``(B, T, features)`` in float32 or wider."""
  x = x.astype(numerics.accumulation_dtype(x.dtype))
  return x.reshape(batch, -1, x.shape[-1])


def _dense_sq_norms(a, d):
  """Per-example ``||a_i^T d_i||^2`` from ``a`` (B, T, in), ``d`` (B, T, out)."""
  t, n_in, n_out = a.shape[1], a.shape[2], d.shape[2]
  if t == 1:
    return jnp.sum(a * a, (1, 2)) * jnp.sum(d * d, (1, 2))
  if t * (n_in + n_out) <= n_in * n_out:
    gram_a = jnp.einsum("bti,bsi->bts", a, a)
    gram_d = jnp.einsum("bto,bso->bts", d, d)
    return jnp.sum(gram_a * gram_d, (1, 2))
  per_example = jnp.einsum("bti,bto->bio", a, d)
  return jnp.sum(per_example * per_example, (1, 2))


def _norms(safe: bool, sq_fn, *arrays):
  if safe:
    return numerics.example_norms(sq_fn, *arrays)
  return jnp.sqrt(sq_fn(*arrays))


def _dense(x, kernel, probe):
  value, safe = _unwrap(probe)
  out = _dense_vjp(x, kernel, value, safe)
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dense_vjp(x, kernel, probe, safe):
  del probe, safe
  return x @ kernel


def _dense_fwd(x, kernel, probe, safe):
  del safe
  return x @ kernel, (x, kernel, probe)


def _dense_bwd(safe, res, g):
  x, kernel, probe = res
  rows_x = x.reshape(-1, x.shape[-1])
  rows_g = g.reshape(-1, g.shape[-1])
  d_kernel = (rows_x.T @ rows_g).astype(kernel.dtype)
  d_x = (g @ kernel.T).astype(x.dtype)
  batch = x.shape[0]
  norms = _norms(safe, _dense_sq_norms, _rows(x, batch), _rows(g, batch))
  return d_x, d_kernel, norms.astype(probe.dtype)


_dense_vjp.defvjp(_dense_fwd, _dense_bwd)


def _bias(y, bias, probe):
  value, safe = _unwrap(probe)
  return _bias_vjp(y, bias, value, safe)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bias_vjp(y, bias, probe, safe):
  del probe, safe
  return y + bias


def _bias_fwd(y, bias, probe, safe):
  del safe
  return y + bias, (bias, probe)


def _bias_bwd(safe, res, g):
  bias, probe = res
  per_example = _rows(g, g.shape[0]).sum(1)
  d_bias = g.reshape(-1, g.shape[-1]).sum(0).astype(bias.dtype)
  norms = _norms(safe, numerics.example_sum_sq, per_example)
  return g, d_bias, norms.astype(probe.dtype)


_bias_vjp.defvjp(_bias_fwd, _bias_bwd)


def probed_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None,
                 kernel_probe: jax.Array,
                 bias_probe: jax.Array | None = None) -> jax.Array:
  """``x @ kernel + bias`` that reports per-example gradient norms.

  Args:
    x: inputs ``(B, ..., in)``; the leading axis indexes examples, middle axes
      (tokens, convolution patches) are positions ``T``.
    kernel: ``(in, out)``.
    bias: ``(out,)`` or ``None``.
    kernel_probe: the kernel's ``(B,)`` probe (from :func:`norm_probes`).
    bias_probe: the bias's probe (needed when ``bias`` is given).

  Returns:
    ``x @ kernel + bias``; differentiating with respect to the probes gives
    each example's gradient norm for the kernel and for the bias (of the
    loss as written, so a mean loss scales them by ``1/B``).

  Example:
    >>> import jax, jax.numpy as jnp, normopt
    >>> p = {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}
    >>> x = jnp.eye(3)
    >>> def loss(p, probes):
    ...   return normopt.probed_dense(x, p['kernel'], p['bias'],
    ...                               probes['kernel'], probes['bias']).sum()
    >>> n = jax.grad(loss, 1)(p, normopt.norm_probes(p, 3))
    >>> print(n['kernel'].value, n['bias'].value)  # e_i 1^T and 1: sqrt(2)
    [1.4142135 1.4142135 1.4142135] [1.4142135 1.4142135 1.4142135]

  References:
    Goodfellow, *Efficient Per-Example Gradient Computations*, 2015 (the
    outer-product identity); Li et al., *Large Language Models Can Be Strong
    Differentially Private Learners*, ICLR 2022 (the Gram form for ``T > 1``).
  """
  if x.ndim < 2 or kernel.ndim != 2 or x.shape[-1] != kernel.shape[0]:
    raise ValueError(f"probed_dense needs x (B, ..., in) and kernel (in, out); "
                     f"got {x.shape} and {kernel.shape}")
  for name, probe in (("kernel_probe", kernel_probe),
                      ("bias_probe", bias_probe)):
    if probe is not None and probe.shape != x.shape[:1]:
      raise ValueError(f"{name} must have shape ({x.shape[0]},) (one entry "
                       f"per example), got {probe.shape}")
  y = _dense(x, kernel, kernel_probe)
  if bias is None:
    return y
  if bias.shape != (kernel.shape[1],) or bias_probe is None:
    raise ValueError(f"bias must have shape ({kernel.shape[1]},) and come "
                     f"with a bias_probe; got {bias.shape}")
  return _bias(y, bias, bias_probe)


def probed(fn: Callable[[Any, jax.Array], jax.Array]
           ) -> Callable[[Any, jax.Array, Any], jax.Array]:
  """Wraps any per-example layer ``fn(params, x)`` to report gradient norms.

  For layers without an outer-product identity (``lax.conv``, LayerNorm
  scales, embeddings): the backward pass takes that layer's per-example
  gradients (``vmap`` of its ``vjp`` over the leading axis of ``x``), so
  the extra memory is one layer's params times ``B``, not the whole model's.
  ``fn`` must treat examples independently (no batch statistics).

  Args:
    fn: ``fn(params, x) -> y`` with ``x`` and ``y`` batched along axis 0.

  Returns:
    ``g(params, x, probes) -> fn(params, x)``; ``probes`` is a tree like
    ``params`` of ``(B,)`` vectors (:func:`norm_probes`).

  Example:
    >>> import jax, jax.numpy as jnp, normopt
    >>> scale = normopt.probed(lambda p, x: x * p['s'])
    >>> p, x = {'s': jnp.ones(2)}, jnp.array([[1., 0.], [3., 4.]])
    >>> loss = lambda p, probes: scale(p, x, probes).sum()
    >>> jax.grad(loss, 1)(p, normopt.norm_probes(p, 2))['s'].value.tolist()
    [1.0, 5.0]
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
  def call(params, x, probes, safe):
    del probes, safe
    return fn(params, x)

  def fwd(params, x, probes, safe):
    del safe
    return fn(params, x), (params, x, probes)

  def bwd(safe, res, g):
    params, x, probes = res
    _, vjp = jax.vjp(fn, params, x)
    d_params, d_x = vjp(g)

    def one(xi, gi):
      _, vjp_i = jax.vjp(lambda p: fn(p, xi[None]), params)
      return vjp_i(gi[None])[0]

    per_example = jax.vmap(one)(x, g)  # this layer's params only, times B
    norms = jax.tree.map(
        lambda d, p: _rewrap(p, _norms(safe, numerics.example_sum_sq, d.astype(
            numerics.accumulation_dtype(d.dtype)))),
        per_example, probes)
    return d_params, d_x, norms

  call.defvjp(fwd, bwd)

  def apply(params, x, probes):
    safe = any(_unwrap(p)[1] for p in jax.tree.leaves(probes,
                                                      is_leaf=_is_probe))
    return call(params, x, probes, safe)
  return apply


def _rewrap(probe, norms):
  """``norms`` as the cotangent of ``probe`` (same type and dtype)."""
  value, safe = _unwrap(probe)
  norms = norms.astype(value.dtype)
  return NormProbe(norms, safe) if isinstance(probe, NormProbe) else norms
