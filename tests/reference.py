"""Float64 NumPy reference implementations, written from the papers.

Nothing here imports normopt: every function is an independent loop over
plain NumPy arrays (lists of blocks), so the tests compare two separately
written implementations of the same pseudo-code.
"""

from __future__ import annotations

import numpy as np


def norm(blocks) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(b, np.float64)))
                           for b in blocks)))


def normalize(blocks, eps=0.0):
  n = norm(blocks) + eps
  return [b / n if n > 0 else np.zeros_like(b) for b in blocks]


# --- primitives, step by step -----------------------------------------------

def heavy_ball(grads, beta, nesterov=False, ema=False, first=False):
  """Outputs of u <- b u + c g for a sequence of gradient lists."""
  u = [np.zeros_like(g) for g in grads[0]]
  outs = []
  for t, g in enumerate(grads):
    b = beta(t) if callable(beta) else beta
    c = 1 - b if ema else 1.0
    if first and t == 0:
      u = [gi.copy() for gi in g]
      c_in = 1.0
    else:
      u = [b * ui + c * gi for ui, gi in zip(u, g)]
      c_in = c
    outs.append([c_in * gi + b * ui for ui, gi in zip(u, g)] if nesterov
                else [ui.copy() for ui in u])
  return outs


def qh_combine(grads, beta, nu):
  d = [np.zeros_like(g) for g in grads[0]]
  outs = []
  for t, g in enumerate(grads):
    b = beta(t) if callable(beta) else beta
    v = nu(t) if callable(nu) else nu
    d = [(1 - b) * gi + b * di for gi, di in zip(g, d)]
    outs.append([(1 - v) * gi + v * di for gi, di in zip(g, d)])
  return outs


def igt_extrapolate(steps, w0, beta):
  """Moves of x_t = w_t + c_t (w_t - w_{t-1}) for true steps w_{t+1} - w_t.

  ``beta(t)`` is β_t with 1-based t; c_t = β_t / (1 - β_t), and w_0 = w_1.
  """
  w_prev = [np.array(x, np.float64) for x in w0]
  w = [x.copy() for x in w_prev]
  x_now = [x.copy() for x in w]
  outs = []
  for t, step in enumerate(steps, start=1):
    w_next = [wi + si for wi, si in zip(w, step)]
    c = beta(t + 1) / (1 - beta(t + 1))
    x_next = [wn + c * (wn - wi) for wn, wi in zip(w_next, w)]
    outs.append([xn - xi for xn, xi in zip(x_next, x_now)])
    w_prev, w, x_now = w, w_next, x_next
  return outs


def lars_scale(g, w, coeff, eps, wd, selected):
  """One trust-ratio step per block (LARS; You et al. 2017)."""
  out = []
  for gi, wi, keep in zip(g, w, selected):
    if not keep:
      out.append(gi.copy())
      continue
    wn, gn = norm([wi]), norm([gi])
    denom = gn + wd * wn + eps
    num = coeff * (wn if wn > 0 else 1.0)
    r = num / denom if denom > 0 else 0.0
    out.append(r * (gi + wd * wi))
  return out


# --- the papers' algorithms on a least-squares problem ----------------------
#
# ``grad(w, k)`` returns the mini-batch gradient (a list of blocks) of batch k
# at the point w; every algorithm returns the list of iterates it produced.

def sngm(grad, w, steps, lr, beta, wd=0.0):
  """SNGM paper, Alg. 1 (u_0 = 0; g_t includes weight decay)."""
  u = [np.zeros_like(x) for x in w]
  for t in range(steps):
    g = [gi + wd * wi for gi, wi in zip(grad(w, t), w)]
    gn = normalize(g)
    u = [beta * ui + gi for ui, gi in zip(u, gn)]
    w = [wi - lr * ui for wi, ui in zip(w, u)]
  return w


def block_sngm(grad, w, steps, lr, beta, wd=0.0):
  """SNGM paper, eq. (13)-(14): each block normalized on its own."""
  u = [np.zeros_like(x) for x in w]
  for t in range(steps):
    g = [gi + wd * wi for gi, wi in zip(grad(w, t), w)]
    u = [beta * ui + normalize([gi])[0] for ui, gi in zip(u, g)]
    w = [wi - lr * ui for wi, ui in zip(w, u)]
  return w


def lars(grad, w, steps, lr, momentum, wd, coeff, selected, nesterov=False):
  """LARS (CLARS paper eq. 3) with heavy-ball momentum on the scaled step."""
  v = [np.zeros_like(x) for x in w]
  for t in range(steps):
    step = [lr * s for s in lars_scale(grad(w, t), w, coeff, 0.0, wd,
                                       selected)]
    v = [momentum * vi + si for vi, si in zip(v, step)]
    move = [si + momentum * vi for si, vi in zip(step, v)] if nesterov else v
    w = [wi - mi for wi, mi in zip(w, move)]
  return w


def lamb(grad, w, steps, lr, b1, b2, eps, wd, selected):
  """LAMB (You et al. 2020, Alg. 2): Adam's bias-corrected direction plus
  decoupled decay, scaled per block by ``‖w‖ / ‖r + λw‖`` (φ = identity);
  unselected blocks take the plain Adam step without decay. A zero ``‖w‖``
  counts as 1 (normopt's choice; the paper leaves it undefined)."""
  m = [np.zeros_like(x) for x in w]
  v = [np.zeros_like(x) for x in w]
  for t in range(steps):
    g = grad(w, t)
    m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
    v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
    step = []
    for mi, vi, wi, keep in zip(m, v, w, selected):
      r = (mi / (1 - b1 ** (t + 1))) / (np.sqrt(vi / (1 - b2 ** (t + 1))) + eps)
      if keep:
        r = r + wd * wi
        wn, rn = norm([wi]), norm([r])
        r = (wn if wn > 0 else 1.0) / rn * r if rn > 0 else 0.0 * r
      step.append(r)
    w = [wi - lr * si for wi, si in zip(w, step)]
  return w


def clars(grad, example_grads, w, steps, lr, beta, coeff, selected):
  """CLARS paper, Alg. 1 with eq. (4)-(5), written in its v/w form.

  v_{t+1} = w_t - Σ_k γ_k g_k;  w_{t+1} = v_{t+1} + β (v_{t+1} - v_t);
  γ_k = lr · coeff · ‖w_k‖ / mean_i ‖∇_k f_i(w_t)‖ (selected blocks only).
  """
  v_prev = [x.copy() for x in w]
  for t in range(steps):
    g = grad(w, t)
    per_example = example_grads(w, t)  # list over examples of block lists
    v = []
    for k, (gk, wk) in enumerate(zip(g, w)):
      if selected[k]:
        mean_norm = np.mean([norm([ex[k]]) for ex in per_example])
        gamma = lr * coeff * norm([wk]) / mean_norm
      else:
        gamma = lr
      v.append(wk - gamma * gk)
    w = [vi + beta * (vi - vp) for vi, vp in zip(v, v_prev)]
    v_prev = v
  return w


def normalized_sgdm(grad, w, steps, lr, beta):
  """NIGT paper eq. (2)-(3) with m_1 = g_1 (Theorem 1)."""
  m = None
  for t in range(steps):
    g = grad(w, t)
    m = g if m is None else [beta * mi + (1 - beta) * gi for mi, gi in zip(m, g)]
    w = [wi - lr * mi for wi, mi in zip(w, normalize(m))]
  return w


def nigt(grad, w, steps, lr, beta):
  """NIGT paper, Alg. 1. Returns (w_T+1, x_T+1): true and extrapolated."""
  x = [wi.copy() for wi in w]
  m = grad(x, 0)
  w_prev, w = w, [wi - lr * mi for wi, mi in zip(w, normalize(m))]
  c = beta / (1 - beta)
  for t in range(1, steps):
    x = [wi + c * (wi - wp) for wi, wp in zip(w, w_prev)]
    m = [beta * mi + (1 - beta) * gi for mi, gi in zip(m, grad(x, t))]
    w_prev, w = w, [wi - lr * mi for wi, mi in zip(w, normalize(m))]
  x = [wi + c * (wi - wp) for wi, wp in zip(w, w_prev)]
  return w, x


def adaptive_nigt(grad, grad2, w, steps, bound, lr_scale=1.0):
  """NIGT paper, Alg. 2 (G_0 = D so that η_0 = C / D^{2/7}).

  Returns (w, x) after ``steps`` steps: the true and extrapolated points.
  """
  C = np.sqrt(7 / (26 * bound ** (6 / 7)))
  D = C ** (-14 / 3)
  w_prev = [wi.copy() for wi in w]
  m = [np.zeros_like(wi) for wi in w]
  G = {0: D, 1: 3 * bound ** 2 + D}
  eta = {0: C / D ** (2 / 7)}

  def beta_at(t):
    e_prev = C / (G[t - 1] ** 2 * t ** 3) ** (1 / 7)
    return 1 - 1 / (t * e_prev ** 2 * G[t - 1])

  for t in range(1, steps + 1):
    eta[t] = C / (G[t] ** 2 * (t + 1) ** 3) ** (1 / 7)
    alpha = 1 / (t * eta[t - 1] ** 2 * G[t - 1])
    beta = 1 - alpha
    x = [wi + beta / (1 - beta) * (wi - wp) for wi, wp in zip(w, w_prev)]
    g, g2 = grad(x, t - 1), grad2(x, t - 1)
    m = [beta * mi + (1 - beta) * gi for mi, gi in zip(m, g)]
    G[t + 1] = (G[t] + norm([a - b for a, b in zip(g, g2)]) ** 2
                + bound ** 2 * ((t + 1) ** 0.25 - t ** 0.25))
    w_prev, w = w, [wi - lr_scale * eta[t] * mi
                    for wi, mi in zip(w, normalize(m))]
  b = beta_at(steps + 1)
  x = [wi + b / (1 - b) * (wi - wp) for wi, wp in zip(w, w_prev)]
  return w, x


def qhm(grad, w, steps, lr, beta, nu, wd=0.0):
  """QHM increasing-batch paper, Alg. 1 (d_{-1} = 0); lr/beta/nu may be
  callables of the step k."""
  d = [np.zeros_like(x) for x in w]
  for k in range(steps):
    a = lr(k) if callable(lr) else lr
    b = beta(k) if callable(beta) else beta
    v = nu(k) if callable(nu) else nu
    g = [gi + wd * wi for gi, wi in zip(grad(w, k), w)]
    d = [(1 - b) * gi + b * di for gi, di in zip(g, d)]
    m = [(1 - v) * gi + v * di for gi, di in zip(g, d)]
    w = [wi - a * mi for wi, mi in zip(w, m)]
  return w


# --- measurements -------------------------------------------------------------

def noise_scale(example_grads):
  """McCandlish et al. (2018), App. A.1: the unbiased estimators of |G|^2 and
  tr(Sigma) from per-example gradients (a list over examples of block lists),
  and their ratio B_simple."""
  b = len(example_grads)
  flat = [np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in ex])
          for ex in example_grads]
  s = np.mean([np.dot(f, f) for f in flat])
  mean = np.mean(flat, axis=0)
  g2 = float(np.dot(mean, mean))
  grad_sq = (b * g2 - s) / (b - 1)
  trace = b * (s - g2) / (b - 1)
  return trace / grad_sq, trace, grad_sq


# --- steepest descent under other norms (Scion paper, Table 1) -----------------

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g, steps=5, coeffs=NS_COEFFS):
  """Jordan et al.'s quintic iteration on a (d_out, d_in) matrix, started
  from g / ‖g‖_F, worked on the wide orientation."""
  a, b, c = coeffs
  n = np.linalg.norm(g)
  x = g / n if n > 0 else np.zeros_like(g)
  flip = x.shape[0] > x.shape[1]
  if flip:
    x = x.T
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if flip else x


def lmo_direction(name, x):
  """argmax_{‖Δ‖ ≤ 1} <x, Δ> of one array (matrix norms on the
  (prod(shape[:-1]), shape[-1]) view) and the dual norm <x, Δ>."""
  x = np.asarray(x, np.float64)
  if name == "sign":
    d = np.sign(x)
  elif name == "rms":
    n = np.linalg.norm(x)
    d = x * np.sqrt(x.size) / n if n > 0 else np.zeros_like(x)
  else:
    m = x.reshape(-1, x.shape[-1])
    if name == "spectral":
      u, s, vt = np.linalg.svd(m, full_matrices=False)
      d = (u[:, s > 1e-12 * s.max()] @ vt[s > 1e-12 * s.max()]
           if s.max() > 0 else np.zeros_like(m))
    else:
      axis = 0 if name == "col" else 1
      n = np.linalg.norm(m, axis=axis, keepdims=True)
      d = m / np.where(n > 0, n, 1)
    d = d.reshape(x.shape)
  return d, float(np.sum(x * d))


def _torch_matrix(w):
  """A Flax kernel (..., in, out) as PyTorch's (out, in·...) matrix: dense
  (in, out) -> (out, in); conv (kh, kw, in, out) -> (out, in, kh, kw) ->
  (out, in·kh·kw)."""
  if w.ndim == 2:
    return w.T
  return np.moveaxis(w, (-1, -2), (0, 1)).reshape(w.shape[-1], -1)


def _from_torch_matrix(m, shape):
  if len(shape) == 2:
    return m.T
  out, cin = shape[-1], shape[-2]
  return np.moveaxis(m.reshape(out, cin, *shape[:-2]), (0, 1), (-1, -2))


def muon(grad, w, steps, lr, beta, wd, nesterov=True, ns_steps=5):
  """Jordan et al.'s Muon (KellerJordan/Muon, muon.py), in PyTorch layout:
  m <- lerp(m, g, 1 - beta); u = lerp(g, m, beta) (Nesterov) or m;
  O = NS5(u) * sqrt(max(1, rows / cols)); W <- W (1 - lr wd) - lr O."""
  m = [np.zeros_like(x) for x in w]
  for t in range(steps):
    g = grad(w, t)
    m = [beta * mi + (1 - beta) * gi for mi, gi in zip(m, g)]
    u = [(1 - beta) * gi + beta * mi for gi, mi in zip(g, m)] if nesterov \
        else m
    new = []
    for wi, ui in zip(w, u):
      mat = _torch_matrix(ui)
      o = newton_schulz(mat, ns_steps)
      o = o * np.sqrt(max(1.0, mat.shape[0] / mat.shape[1]))
      new.append(wi * (1 - lr * wd) - lr * _from_torch_matrix(o, wi.shape))
    w = new
  return w


def _scion_lmo(name, g):
  """The LIONS-EPFL/scion reference's lmo in PyTorch layout (``g`` a torch
  matrix (out, in·k...) for matrices, or a vector), without its 1e-8:
  Spectral / SpectralConv, Sign, RowNorm (normalized), ColNorm (not
  normalized) and BiasRMS."""
  if name == "rms":  # BiasRMS
    return g / np.sqrt(np.mean(g ** 2))
  d_out, d_in = g.shape
  if name == "sign":
    return np.sign(g) / d_in
  if name == "col":  # RowNorm(normalized=True): each torch row
    return g / (np.linalg.norm(g, axis=1, keepdims=True) * np.sqrt(d_in))
  if name == "row":  # ColNorm(normalized=False): each torch column
    return g / (np.linalg.norm(g, axis=0, keepdims=True) / np.sqrt(d_out))
  raise ValueError(name)


def scion(grad, w, steps, lr, beta, norms, radii, unconstrained=False):
  """Pethick et al.'s Scion (LIONS-EPFL/scion, scion.py): buf <- (1 - a) buf
  + a g with a = 1 - beta; update = radius * lmo(buf); if constrained
  p <- (1 - lr) p; p <- p - lr * update. Conv kernels: NS on (out, in·k·k)
  times sqrt(out / in) / k² (SpectralConv); dense: times sqrt(out / in)."""
  alpha = 1 - beta
  buf = [np.zeros_like(x) for x in w]
  for t in range(steps):
    g = grad(w, t)
    buf = [(1 - alpha) * b + alpha * gi for b, gi in zip(buf, g)]
    new = []
    for wi, b, name, r in zip(w, buf, norms, radii):
      if name == "spectral":
        mat = _torch_matrix(b)
        o = newton_schulz(mat, 5)
        if wi.ndim == 2:
          o = o * np.sqrt(mat.shape[0] / mat.shape[1])
        else:  # (out, in, kh, kw)
          o = o * np.sqrt(wi.shape[-1] / wi.shape[-2]) / np.prod(
              wi.shape[:-2])
        u = _from_torch_matrix(o, wi.shape)
      elif wi.ndim == 1:
        u = _scion_lmo(name, b)
      else:
        u = _from_torch_matrix(_scion_lmo(name, _torch_matrix(b)), wi.shape)
      if not unconstrained:
        wi = (1 - lr) * wi
      new.append(wi - lr * r * u)
    w = new
  return w


def precondition(x, how):
  """The pre-scales before Newton-Schulz (optax's names; muon_frontier.md
  section 3), on a (n, m) float64 matrix in the wide orientation n <= m:
  frobenius X/‖X‖_F, spectral X/σ_max, schatten X/(Σσ⁴)^{1/4}, aol S X with
  S = diag(Σ_j |(XXᵀ)_ij|)^{-1/2}."""
  if not np.any(x):
    return np.zeros_like(x)
  s = np.linalg.svd(x, compute_uv=False)
  if how == "frobenius":
    return x / np.sqrt(np.sum(s ** 2))
  if how == "spectral":
    return x / s[0]
  if how == "schatten":
    return x / np.sum(s ** 4) ** 0.25
  if how == "aol":
    d = np.sum(np.abs(x @ x.T), axis=1)
    return x / np.sqrt(d)[:, None]
  raise ValueError(how)


def newton_schulz_table(g, table, steps, how="frobenius"):
  """Newton-Schulz with a coefficient table: iteration i uses row
  min(i, n - 1) (Polar Express, Alg. 1: the last row repeats), from the
  pre-scaled g, on the wide orientation."""
  x = np.asarray(g, np.float64)
  flip = x.shape[0] > x.shape[1]
  x = precondition(x.T if flip else x, how)
  table = np.asarray(table, np.float64).reshape(-1, 3)
  for i in range(steps):
    a, b, c = table[min(i, len(table) - 1)]
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if flip else x


def normuon(grad, w, steps, lr, beta, b2, wd, ns_steps=5):
  """Li et al.'s NorMuon (zichongli5/NorMuon, normuon.py) in PyTorch layout
  (each w a (out, in) matrix): M <- lerp(M, G, 1 - b1); U = lerp(G, M, b1);
  O = NS5(U); v <- lerp(v, mean_in(O²), 1 - b2) per output row;
  Ô = O / (√v + 1e-10); Ô *= ‖O‖_F / (‖Ô‖_F + 1e-10); Ô *= √max(1, out/in);
  W <- W (1 - lr wd) - lr Ô."""
  m = [np.zeros_like(x) for x in w]
  v = [np.zeros((x.shape[0], 1)) for x in w]
  for t in range(steps):
    g = grad(w, t)
    m = [beta * mi + (1 - beta) * gi for mi, gi in zip(m, g)]
    u = [(1 - beta) * gi + beta * mi for gi, mi in zip(g, m)]
    new, new_v = [], []
    for wi, ui, vi in zip(w, u, v):
      o = newton_schulz(ui, ns_steps)
      vi = b2 * vi + (1 - b2) * np.mean(o ** 2, axis=1, keepdims=True)
      oh = o / (np.sqrt(vi) + 1e-10)
      oh = oh * np.linalg.norm(o) / (np.linalg.norm(oh) + 1e-10)
      oh = oh * np.sqrt(max(1.0, wi.shape[0] / wi.shape[1]))
      new.append(wi * (1 - lr * wd) - lr * oh)
      new_v.append(vi)
    w, v = new, new_v
  return w
