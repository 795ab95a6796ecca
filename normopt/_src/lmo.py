"""Unit-norm steepest directions (linear minimization oracles) of one block.

For a block ``d`` and a norm ``‖·‖`` the direction is
``argmax_{‖Δ‖ ≤ 1} <d, Δ>`` (the negative of the LMO of the Scion paper), and
``<d, direction> = ‖d‖_*``, the dual norm, is kept as the diagnostic:

======== ===================================== ============================
norm     direction                             dual norm ``‖d‖_*``
======== ===================================== ============================
l2       ``d / ‖d‖₂``                          ``‖d‖₂``
rms      ``d / rms(d) = √n d / ‖d‖₂``          ``√n ‖d‖₂``
sign     ``sign(d)`` (the ℓ∞ ball)             ``‖d‖₁``
col      each column of the matrix over its    ``Σ_j ‖d[:, j]‖₂``
         own ℓ2 norm
row      each row of the matrix over its own   ``Σ_i ‖d[i, :]‖₂``
         ℓ2 norm
spectral ``U Vᵀ`` for ``d = U S Vᵀ`` (Newton-   the nuclear norm ``Σ σ``
         Schulz, or an exact SVD)              (``<d, U Vᵀ>``)
======== ===================================== ============================

The *matrix view* of a leaf with more than two dimensions is
``reshape(-1, shape[-1])``: a Flax kernel ``(..., in, out)`` becomes
``(kh·kw·in, out)``, so columns are output units (PyTorch's rows). Every
direction is computed in float32 or wider and is exact at any scale: the
block is first divided by a power of two (or by its exact norm) that brings
its largest entry near one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from normopt._src import numerics

NormName = Literal["l2", "spectral", "sign", "rms", "col", "row"]
NORMS = ("l2", "spectral", "sign", "rms", "col", "row")
MATRIX_NORMS = ("spectral", "col", "row")  # one leaf per block, 2-D view
# Jordan et al.'s quintic Newton-Schulz coefficients (Muon reference).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def matrix_view(x: jax.Array) -> jax.Array:
  """``x`` as a matrix: ``(prod(shape[:-1]), shape[-1])``."""
  if x.ndim < 2:
    raise ValueError(f"a matrix norm needs a leaf with 2 or more dimensions, "
                     f"got shape {x.shape}")
  return x.reshape(-1, x.shape[-1])


def newton_schulz(x: jax.Array, steps: int,
                  coeffs: Sequence[float] = NS_COEFFS) -> jax.Array:
  """Approximately ``U Vᵀ`` for ``x = U S Vᵀ`` with ``‖x‖_F ≤ 1``.

  ``steps`` iterations of ``X ← a X + (b A + c A²) X``, ``A = X Xᵀ``, on the
  wide orientation (a tall ``x`` is transposed and back).
  """
  a, b, c = (jnp.asarray(k, x.dtype) for k in coeffs)
  tall = x.shape[0] > x.shape[1]

  def step(_, y):
    gram = y @ y.T
    return a * y + (b * gram + c * gram @ gram) @ y

  # fori_loop: ``steps`` may be traced (optax.inject_hyperparams)
  y = jax.lax.fori_loop(0, steps, step, x.T if tall else x)
  return y.T if tall else y


def polar_svd(x: jax.Array) -> jax.Array:
  """Exactly ``U Vᵀ`` for ``x = U S Vᵀ`` (reduced SVD), zero for ``x = 0``."""
  u, s, vt = jnp.linalg.svd(x, full_matrices=False)
  rank = s > s[0] * max(x.shape) * jnp.finfo(x.dtype).eps
  return (u * rank) @ vt


def _pow2_scaled(x: jax.Array):
  """``(x 2^-e, e)`` with ``2^e`` the power of two of ``max |x|``."""
  e = numerics.pow2_exponent(jnp.max(jnp.abs(x)))
  return numerics.pow2_rescale(x, e), e


def _unit_lines(x: jax.Array, axis: int):
  """Each line of ``x`` along ``axis`` over its ℓ2 norm; the dual norm."""
  y, e = _pow2_scaled(x)
  norms = jnp.sqrt(jnp.sum(jnp.square(y), axis=axis, keepdims=True))
  out = y / jnp.where(norms > 0, norms, 1)
  return out, jnp.ldexp(jnp.sum(norms), e)


def direction(name: str, leaves: list[jax.Array], l2_norm: jax.Array | None,
              *, eps: float, ns_steps: int, ns_coeffs: Sequence[float],
              exact_svd: bool, axis_name: str | None):
  """The unit-norm direction of one block under norm ``name``.

  Args:
    name: one of :data:`NORMS` other than ``"l2"`` (which the caller does).
    leaves: the block's leaves (one leaf for the matrix norms).
    l2_norm: the block's exact ℓ2 norm (for rms and spectral), else None.
    eps: added to the scalar the direction divides by (rms, spectral).
    ns_steps, ns_coeffs, exact_svd: the spectral method.
    axis_name: mapped axis over which the leaves are shards (sign, rms).

  Returns:
    ``(directions, dual_norm)``: a list like ``leaves`` (each in its dtype)
    and a scalar in the accumulation dtype.
  """
  dtype = numerics.norm_dtype(leaves)
  if name == "rms":
    n = sum(x.size for x in leaves)
    if axis_name is not None:
      n = jax.lax.psum(n, axis_name)
    root_n = jnp.sqrt(jnp.asarray(n, dtype))
    out = [numerics.divide_by_norm(x, l2_norm / root_n + eps) for x in leaves]
    return out, root_n * l2_norm
  if name == "sign":
    total = jnp.zeros((), dtype)
    for x in leaves:
      y, e = _pow2_scaled(x.astype(numerics.accumulation_dtype(x.dtype)))
      total = total + jnp.ldexp(jnp.sum(jnp.abs(y)).astype(dtype), e)
    if axis_name is not None:
      total = jax.lax.psum(total, axis_name)
    # sign(±inf) is ±1: make a non-finite entry give NaN, so a bad gradient
    # shows in the step (apply_if_finite can skip it) instead of hiding in
    # the momentum forever.
    return [jnp.where(jnp.isfinite(x), jnp.sign(x), jnp.nan).astype(x.dtype)
            for x in leaves], total
  (x,) = leaves
  m = matrix_view(x).astype(numerics.accumulation_dtype(x.dtype))
  if name in ("col", "row"):
    out, dual = _unit_lines(m, axis=0 if name == "col" else 1)
    return [out.reshape(x.shape).astype(x.dtype)], dual.astype(dtype)
  if name != "spectral":
    raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")
  unit = numerics.divide_by_norm(m, l2_norm + eps)  # ‖unit‖_F <= 1
  polar = polar_svd(unit) if exact_svd else newton_schulz(unit, ns_steps,
                                                          ns_coeffs)
  dual = l2_norm * jnp.sum(unit * polar)
  return [polar.reshape(x.shape).astype(x.dtype)], dual.astype(dtype)


def shape_factor(x: jax.Array) -> float:
  """Muon's ``sqrt(max(1, d_out / d_in))`` of a leaf's matrix view (Flax
  layout: ``d_in`` rows, ``d_out`` columns)."""
  rows, cols = matrix_view(x).shape
  return math.sqrt(max(1.0, cols / rows))
