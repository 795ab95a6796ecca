"""Muon on Flax transformers: dimension numbers, optax's options, NorMuon
and explicit sharding, against float64 NumPy references and optax."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from optax.contrib import MuonDimensionNumbers as MDN

import normopt
from tests import reference, registry
from tests.test_lmo import _quadratic

HEADS, HEAD_DIM, WIDTH = 4, 16, 64


class Block(nnx.Module):
  """Embedding, attention, a dense layer and a head: every kind of leaf."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(11, WIDTH, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
        HEADS, WIDTH, qkv_features=HEADS * HEAD_DIM, decode=False, rngs=rngs)
    self.norm = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.dense = nnx.Linear(WIDTH, 2 * WIDTH, rngs=rngs)
    self.head = nnx.Linear(2 * WIDTH, 11, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    x = x + self.attention(self.norm(x))
    return self.head(jax.nn.gelu(self.dense(x)))


def _tokens():
  return jnp.asarray(np.random.default_rng(0).integers(0, 11, (8, 6)))


def _loss(model, tokens):
  logits = model(tokens)
  return optax.softmax_cross_entropy_with_integer_labels(
      logits[:, :-1], tokens[:, 1:]).mean()


def _pure(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64),
                      nnx.to_pure_dict(tree))


def _one_step(tx, model):
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = _pure(nnx.state(model, nnx.Param))
  grads = nnx.grad(_loss)(model, _tokens())
  optimizer.update(model, grads)
  after = _pure(nnx.state(model, nnx.Param))
  return before, after, _pure(grads)


def _view(x, reduction, output):
  """A float64 (fan_in, fan_out) matrix of ``x`` (reference transcription of
  the dimension numbers, with no batch axis)."""
  order = (*reduction, *output)
  fan_in = int(np.prod([x.shape[a] for a in reduction]))
  return np.transpose(x, order).reshape(fan_in, -1)


def test_helper_gives_the_reference_views_of_attention():
  model = Block(nnx.Rngs(0))
  dims = normopt.flax_weight_dimension_numbers(model, exclude=("head",))
  attention = dims["attention"]
  for name in ("query", "key", "value"):
    assert attention[name]["kernel"] == MDN((0,), (1, 2))
    assert attention[name]["bias"] is None
  assert attention["out"]["kernel"] == MDN((0, 1), (2,))
  assert dims["dense"]["kernel"] == MDN(0, 1)
  for none in (dims["embed"]["embedding"], dims["head"]["kernel"],
               dims["norm"]["scale"], dims["dense"]["bias"]):
    assert none is None
  conv = normopt.flax_weight_dimension_numbers(
      nnx.Conv(3, 5, (3, 3), rngs=nnx.Rngs(0)))
  assert conv["kernel"] == MDN((0, 1, 2), 3)


def test_one_muon_step_orthogonalizes_the_reference_views():
  """Through nnx.Optimizer: each q/k/v kernel moves by -lr NS(g) of its
  (in, heads·head_dim) view, the out kernel by its (heads·head_dim, out)
  view (float64 reference, rel 1e-4); biases take AdamW's step."""
  model = Block(nnx.Rngs(0))
  dims = normopt.flax_weight_dimension_numbers(model, exclude=("head",))
  lr = 0.01
  before, after, grads = _one_step(
      normopt.muon(lr, weight_dimension_numbers=dims), model)
  views = {"query": ((0,), (1, 2)), "key": ((0,), (1, 2)),
           "value": ((0,), (1, 2)), "out": ((0, 1), (2,))}
  for name, (red, out) in views.items():
    step = after["attention"][name]["kernel"] - before["attention"][name][
        "kernel"]
    g = _view(grads["attention"][name]["kernel"], red, out)
    scale = np.sqrt(max(1.0, g.shape[1] / g.shape[0]))
    want = -lr * scale * reference.newton_schulz(g)
    got = _view(step, red, out)
    np.testing.assert_allclose(got, want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max(), err_msg=name)
    # the old (in·heads, head_dim) view is a different step
    if name != "out":
      raw = grads["attention"][name]["kernel"]
      old = reference.newton_schulz(raw.reshape(-1, HEAD_DIM)).reshape(
          raw.shape)
      assert np.linalg.norm(-lr * old - step) > 0.1 * np.linalg.norm(step)
  # biases: AdamW's first step, -lr g / (|g| + eps), not an orthogonal one
  g = grads["attention"]["query"]["bias"]
  step = after["attention"]["query"]["bias"] - before["attention"]["query"][
      "bias"]
  np.testing.assert_allclose(step, -lr * g / (np.abs(g) + 1e-10), rtol=1e-4,
                             atol=1e-7)


def test_equals_optax_muon_with_the_same_dimension_numbers():
  """bias_correction=True and eps=1e-8 is optax.contrib.muon's math on the
  orthogonalized leaves (float32, 3 steps, rel 1e-4)."""
  dims = normopt.flax_weight_dimension_numbers(Block(nnx.Rngs(0)),
                                               exclude=("head",))
  # optax's other optimizer, so that the whole models stay equal
  adam = optax.adamw(0.01, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                     nesterov=True)
  ours = normopt.muon(0.01, eps=1e-8, bias_correction=True,
                      weight_dimension_numbers=dims, other=adam)
  theirs = optax.contrib.muon(0.01, muon_weight_dimension_numbers=dims)
  results = []
  for tx in (ours, theirs):
    model = Block(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(3):
      optimizer.update(model, nnx.grad(_loss)(model, _tokens()))
    results.append(_pure(nnx.state(model, nnx.Param)))
  for name in ("query", "key", "value", "out"):
    np.testing.assert_allclose(
        results[0]["attention"][name]["kernel"],
        results[1]["attention"][name]["kernel"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(results[0]["dense"]["kernel"],
                             results[1]["dense"]["kernel"], rtol=1e-4,
                             atol=1e-6)


def test_default_sends_ambiguous_leaves_to_adamw_with_a_warning():
  model = Block(nnx.Rngs(0))
  with pytest.warns(UserWarning, match=r"\['attention'\]\['key'\]\['kernel'\]"
                    ".*flax_weight_dimension_numbers"):
    nnx.Optimizer(model, normopt.muon(0.01), wrt=nnx.Param)
  with pytest.warns(UserWarning, match="no leaf is orthogonalized"):
    normopt.muon(0.01).init({"b": jnp.ones(3), "s": jnp.ones(())})
  params = {"qkv": jnp.ones((4, 2, 3))}
  with pytest.raises(ValueError, match=r"leaf \['qkv'\].*no default matrix"):
    normopt.muon(0.01, mask=True).init(params)
  with pytest.raises(ValueError, match=r"leaf \['qkv'\].*no default matrix"):
    tx = normopt.normalize_per_block(norm="spectral")
    tx.update(params, tx.init(params))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    normopt.muon(0.01, weight_dimension_numbers={"qkv": MDN(0, (1, 2))}).init(
        params)


def test_consistent_rms_gives_adamw_rms():
  """consistent_rms=0.2: update RMS 0.2·lr on a 64×96 matrix (Polar Express
  converged in 8 steps); the default shape factor gives 1/√96·√1.5."""
  g = {"w": jnp.asarray(np.random.default_rng(1).standard_normal((64, 96)),
                        jnp.float32)}
  lr = 0.01
  for rms, want in ((0.2, 0.2 * lr), (None, lr * np.sqrt(1.5 / 96))):
    tx = normopt.muon(lr, consistent_rms=rms, ns_coeffs="polar_express",
                      ns_steps=8)
    u, _ = tx.update(g, tx.init(g), g)
    np.testing.assert_allclose(float(jnp.sqrt(jnp.mean(u["w"] ** 2))), want,
                               rtol=2e-3)


@pytest.mark.parametrize("steps", [2, 4, 7])
def test_coefficient_table_runs_row_i_at_iteration_i(steps):
  """An (n, 3) table: row i at iteration i, the last row repeating, the
  first ``steps`` rows of a longer table (float64 reference)."""
  table = lmo_table("polar_express")[[0, 2, 4, 7]]  # last row converges
  g = np.random.default_rng(2).standard_normal((7, 5))
  with jax.enable_x64(True):
    tx = normopt.normalize_per_block(norm="spectral", ns_coeffs=table,
                                     ns_steps=steps)
    u, _ = tx.update({"w": jnp.asarray(g)}, tx.init({"w": jnp.asarray(g)}))
  want = reference.newton_schulz_table(g, table, steps)
  np.testing.assert_allclose(np.asarray(u["w"]), want, rtol=1e-10,
                             atol=1e-12)


def test_presets_are_the_published_tables():
  from normopt._src import lmo
  pe = lmo.ns_table("polar_express")
  assert pe.shape == (8, 3)
  np.testing.assert_allclose(pe[0], (8.205160, -22.901935, 16.460725),
                             rtol=1e-6)
  np.testing.assert_allclose(pe[7], (1.875, -1.25, 0.375))
  np.testing.assert_allclose(lmo.ns_table("dion")[4],
                             (2.8366, -3.0525, 1.2012))
  with pytest.raises(ValueError, match="ns_coeffs: unknown preset 'muon'"):
    normopt.muon(0.1, ns_coeffs="muon")
  with pytest.raises(ValueError, match="ns_coeffs must be"):
    normopt.muon(0.1, ns_coeffs=((1.0, 2.0),))


@pytest.mark.parametrize("how", ["frobenius", "spectral", "schatten", "aol"])
@pytest.mark.parametrize("shape", [(6, 9), (9, 6)])
def test_preconditioning_matches_float64(how, shape):
  g = np.random.default_rng(3).standard_normal(shape)
  with jax.enable_x64(True):
    tx = normopt.normalize_per_block(norm="spectral", preconditioning=how,
                                     ns_coeffs="dion")
    u, _ = tx.update({"w": jnp.asarray(g)}, tx.init({"w": jnp.asarray(g)}))
  want = reference.newton_schulz_table(g, lmo_table("dion"), 5, how)
  np.testing.assert_allclose(np.asarray(u["w"]), want, rtol=1e-9,
                             atol=1e-11)


def lmo_table(name):
  from normopt._src import lmo
  return lmo.ns_table(name)


_OPTIONS = {
    "frobenius": {},
    "spectral": {"preconditioning": "spectral"},
    "schatten": {"preconditioning": "schatten"},
    "aol": {"preconditioning": "aol"},
    "polar_express": {"ns_coeffs": "polar_express"},
    "consistent_rms": {"consistent_rms": 0.2},
}


@pytest.mark.parametrize("scale", [1e-30, 1e30])
@pytest.mark.parametrize("option", sorted(_OPTIONS))
def test_options_are_exact_at_any_scale_however_compiled(option, scale):
  """The step for g·1e±30 equals the step for g, with the gradient a jit
  argument, a closed-over constant, and computed inside jit."""
  rng = np.random.default_rng(4)
  g = {"w": jnp.asarray(rng.standard_normal((6, 9)), jnp.float32),
       "qkv": jnp.asarray(rng.standard_normal((6, 2, 3)), jnp.float32)}
  dims = {"w": MDN(), "qkv": MDN(0, (1, 2))}
  tx = normopt.muon(0.1, weight_dimension_numbers=dims, **_OPTIONS[option])
  state = tx.init(g)
  want, _ = jax.jit(tx.update)(g, state, g)
  big = jax.tree.map(lambda x: x * scale, g)
  ways = {
      "argument": lambda: jax.jit(tx.update)(big, state, g),
      "constant": lambda: jax.jit(lambda s: tx.update(big, s, g))(state),
      "computed": lambda: jax.jit(lambda s, f: tx.update(
          jax.tree.map(lambda x: x * f, g), s, g))(state, scale),
  }
  for how, run in ways.items():
    got, _ = run()
    for k in g:
      np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]),
                                 rtol=1e-5, atol=1e-7, err_msg=(k, how))


def test_batch_axes_are_separate_matrices():
  """MDN(1, 2) on (heads, in, out): each head orthogonalized alone."""
  g = np.random.default_rng(5).standard_normal((3, 5, 4))
  tx = normopt.normalize_per_block(norm="spectral", exact_svd=True,
                                   weight_dimension_numbers=MDN(1, 2))
  u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, tx.init(
      {"w": jnp.asarray(g, jnp.float32)}))
  dual = 0.0
  for h in range(3):
    want, d = reference.lmo_direction("spectral", g[h])
    np.testing.assert_allclose(np.asarray(u["w"][h]), want, rtol=1e-5,
                               atol=1e-6)
    dual += d
  np.testing.assert_allclose(float(state.norms["w"]), dual, rtol=1e-5)


def test_normuon_matches_the_authors_update():
  """50 steps of NorMuon against a float64 transcription of the authors'
  code (PyTorch layout; Flax columns are its rows), float64."""
  keys, w0, grad = _quadratic(6, {"a": (8, 5), "b": (4, 9)})

  def grad_torch(w, t):
    return [x.T for x in grad([wi.T for wi in w], t)]

  with jax.enable_x64(True):
    tx = normopt.normuon(0.02, beta=0.95, b2=0.95, weight_decay=0.1)
    params = {k: jnp.asarray(w) for k, w in zip(keys, w0)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(50):
      g = grad([np.asarray(params[k]) for k in keys], t)
      u, state = step(dict(zip(keys, map(jnp.asarray, g))), state, params)
      params = optax.apply_updates(params, u)
  want = reference.normuon(grad_torch, [w.T for w in w0], 50, 0.02, 0.95,
                           0.95, 0.1)
  for k, w in zip(keys, want):
    np.testing.assert_allclose(np.asarray(params[k]), w.T, rtol=1e-6,
                               atol=1e-9, err_msg=k)


# --- optax's generic sharding battery (optax/_src/sharding_test.py), for
# every alias: abstract init, and an explicit mesh with float16 params
# sharded float16[2, 8@x, 4], types equal between init and update, with and
# without jit.

NAMES = sorted(registry.ALIASES)


def _update(name, tx):
  def run(grads, state, params):
    return tx.update(grads, state, params,
                     **registry.extra_args(name, grads, params))
  return run


@pytest.mark.parametrize("name", NAMES)
def test_init_with_abstract_input(name):
  params = jax.ShapeDtypeStruct(shape=(2, 4, 8), dtype=jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    assert registry.make(name).init(params) is not None


@pytest.mark.parametrize("name", NAMES)
def test_state_sharding_types_under_an_explicit_mesh(name):
  mesh = jax.make_mesh((8,), ("x",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, jax.P(None, "x"))
  tx = registry.make(name)
  with jax.set_mesh(mesh), warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    params = jnp.zeros((2, 8, 4), dtype=jnp.float16, out_sharding=sharding)
    state0 = tx.init(params)
    state_jit = jax.jit(tx.init)(params)
    _, state1 = _update(name, tx)(params, state0, params)
    _, state2 = jax.jit(_update(name, tx))(params, state0, params)
    types = [jax.tree.map(jax.typeof, s)
             for s in (state0, state_jit, state1, state2)]
    for t in types[1:]:
      assert t == types[0]


@pytest.mark.parametrize("name", ["muon", "normuon", "scion"])
def test_orthogonalizes_explicitly_sharded_matrices(name):
  """A (2, 8@x, 4) leaf as two (8, 4) matrices: the step equals the
  unsharded one and keeps its sharding."""
  mesh = jax.make_mesh((8,), ("x",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, jax.P(None, "x"))
  g = np.random.default_rng(7).standard_normal((2, 8, 4)).astype(np.float32)
  dims = MDN(1, 2)
  tx = getattr(normopt, name)(0.1, weight_dimension_numbers=dims)
  want, _ = tx.update(jnp.asarray(g), tx.init(jnp.asarray(g)),
                      jnp.asarray(g))
  with jax.set_mesh(mesh):
    x = jax.device_put(g, sharding)
    got, _ = jax.jit(tx.update)(x, tx.init(x), x)
    assert jax.typeof(got).sharding.spec == jax.typeof(x).sharding.spec
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                             atol=1e-7)
