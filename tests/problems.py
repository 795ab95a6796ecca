"""Small stochastic problems shared by the method tests."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


class LeastSquares:
  """Multi-output least squares ``0.5 mean_i ‖x_i W + b - y_i‖²`` with a
  fixed sequence of random mini-batches. Params are ``{'bias', 'kernel'}``;
  NumPy blocks come in the same (sorted) order: ``[bias, kernel]``."""

  def __init__(self, n=256, d=6, k=3, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    self.x = rng.standard_normal((n, d))
    w_true = rng.standard_normal((d, k))
    self.y = self.x @ w_true + 0.5 + 0.3 * rng.standard_normal((n, k))
    self.batches = [rng.choice(n, batch, replace=False) for _ in range(400)]
    self.other = [rng.choice(n, batch, replace=False) for _ in range(400)]
    self.w0 = [0.1 * rng.standard_normal(k), 0.1 * rng.standard_normal((d, k))]

  def params(self):
    return {"bias": jnp.asarray(self.w0[0]), "kernel": jnp.asarray(self.w0[1])}

  # NumPy side ---------------------------------------------------------------
  def _grad_on(self, w, idx):
    b, kernel = w
    r = (self.x[idx] @ kernel + b - self.y[idx]) / len(idx)
    return [r.sum(0), self.x[idx].T @ r]

  def grad(self, w, t):
    return self._grad_on(w, self.batches[t])

  def grad2(self, w, t):
    return self._grad_on(w, self.other[t])

  def example_grads(self, w, t):
    return [self._grad_on(w, np.array([i])) for i in self.batches[t]]

  # JAX side -----------------------------------------------------------------
  @staticmethod
  def loss(params, x, y):
    pred = x @ params["kernel"] + params["bias"]
    return 0.5 * jnp.mean(jnp.sum((pred - y) ** 2, axis=-1))

  def batch(self, t, other=False):
    idx = (self.other if other else self.batches)[t]
    return jnp.asarray(self.x[idx]), jnp.asarray(self.y[idx])

  def jax_grad(self, params, t, other=False):
    return jax.grad(self.loss)(params, *self.batch(t, other))

  def jax_example_norms(self, params, t):
    return example_norms(self.loss, params, *self.batch(t))


def example_norms(loss, params, x, y):
  """Mean over the batch of each example's gradient norm, per leaf, computed
  one example at a time with ``vmap`` of ``grad`` (the CLARS extra argument)."""
  per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(
      params, x[:, None], y[:, None])
  return jax.tree.map(
      lambda g: jnp.mean(jnp.sqrt(jnp.sum(g.reshape(len(x), -1) ** 2, 1))),
      per_example)


@functools.lru_cache(maxsize=1)
def digits():
  """scikit-learn's digits (shipped with the package), standardized."""
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  return np.asarray(x, np.float32), np.asarray(y, np.int32)
