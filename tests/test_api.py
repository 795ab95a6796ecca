"""The API's shape: signatures like optax's, no module state, the edge cases
optax's generic suite finds (empty masks, abstract init), labelled CLARS
blocks end to end, telemetry."""

import ast
import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from tests import registry

ALIASES = sorted(registry.ALIASES)
PRIMITIVES = ["normalize_global", "normalize_per_block", "heavy_ball",
              "qh_combine", "igt_extrapolate", "trust_ratio"]


def test_registry_covers_every_alias():
  exported = {n for n in normopt.__all__ if callable(getattr(normopt, n))}
  assert set(ALIASES) <= exported


@pytest.mark.parametrize("name", ALIASES)
def test_alias_takes_learning_rate_then_keywords_only(name):
  params = list(inspect.signature(getattr(normopt, name)).parameters.values())
  assert params[0].name == "learning_rate"
  assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
  assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), (
      [p.name for p in params[1:] if p.kind is not inspect.Parameter.KEYWORD_ONLY])


@pytest.mark.parametrize("name", PRIMITIVES)
def test_primitive_takes_at_most_one_positional(name):
  params = inspect.signature(getattr(normopt, name)).parameters.values()
  positional = [p.name for p in params
                if p.kind is not inspect.Parameter.KEYWORD_ONLY]
  assert len(positional) <= 1, positional


def test_optax_positional_order_is_an_error_not_another_meaning():
  with pytest.raises(TypeError):
    normopt.lars(1.0, 1e-4)  # optax.lars(1.0, 1e-4): weight decay 1e-4


def _module_level_mutables(path):
  """Module-level names bound to a list, dict, set or ContextVar."""
  found = []
  for node in ast.parse(path.read_text()).body:
    value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
    if isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp,
                          ast.DictComp, ast.SetComp)) or (
        isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
        and value.func.id in ("list", "dict", "set", "ContextVar")):
      found.append(f"{path.name}:{node.lineno}")
  return found


def test_no_module_level_mutable_state():
  root = pathlib.Path(normopt.__file__).parent
  found = [f for p in sorted(root.rglob("*.py"))
           for f in _module_level_mutables(p)]
  assert not found, found


def _params():
  return {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
          "scale": jnp.ones(3)}


@pytest.mark.parametrize("name", ALIASES)
def test_abstract_init_matches_concrete(name):
  """init on jax.ShapeDtypeStruct params, and under jax.eval_shape."""
  tx = registry.make(name)
  params = _params()
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                          params)
  concrete = tx.init(params)
  for state in (tx.init(abstract), jax.eval_shape(tx.init, abstract)):
    assert jax.tree.structure(state) == jax.tree.structure(concrete)
    for a, c in zip(jax.tree.leaves(state), jax.tree.leaves(concrete)):
      assert (a.shape, a.dtype) == (c.shape, c.dtype)


@pytest.mark.parametrize("name", ["lars", "clars", "lamb"])
@pytest.mark.parametrize("mask", ["nothing", "everything"])
def test_masks_that_select_nothing_or_everything(name, mask):
  """A logistic-regression weight vector (all leaves 1-D: mask=None, the
  papers' exclusion, selects nothing), and mask=True; one step is finite
  and as documented."""
  w = {"b": jnp.ones(3), "v": jnp.full(3, 2.0)}
  g = jax.tree.map(lambda x: 0.1 * x, w)
  tx = registry.make(name, mask=None if mask == "nothing" else True)
  u, state = tx.update(g, tx.init(w), w, **registry.extra_args(name, g, w))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
  status = normopt.telemetry(state)["trust_ratio_0"]["status"]
  want = "masked_out" if mask == "nothing" else "scaled"
  assert {normopt.TRUST_STATUS[int(s)] for s in jax.tree.leaves(status)} == {
      want}


@pytest.mark.parametrize("name", ["lars", "clars", "lamb"])
def test_masked_link_on_empty_tree(name):
  tx = registry.make(name)
  u, _ = tx.update({}, tx.init({}), {}, **registry.extra_args(name, {}, {}))
  assert u == {}


def test_clars_with_labelled_blocks_end_to_end():
  """Kernel and bias of one layer as one block: per_example_block_norms'
  labelled norms feed clars(blocks=...); the ratio equals k‖w‖/mean_i‖g_i‖
  over the two leaves together."""
  rng = np.random.default_rng(0)
  params = {"kernel": jnp.asarray(rng.normal(size=(5, 2)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)
  labels = {"kernel": "layer", "bias": "layer"}

  def loss(p, batch):
    xb, yb = batch
    return 0.5 * jnp.mean(jnp.sum((xb @ p["kernel"] + p["bias"] - yb) ** 2, -1))

  _, grads, norms = normopt.per_example_block_norms(loss, params, (x, y),
                                                    blocks=labels)
  assert set(norms) == {"layer"}
  tx = normopt.clars(1.0, trust_coefficient=0.01, momentum=0.0, mask=True,
                     blocks=labels)
  u, state = tx.update(grads, tx.init(params), params,
                       per_example_norms=norms)
  per_example = [np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                             for g in jax.tree.leaves(jax.grad(loss)(
                                 params, (x[i:i + 1], y[i:i + 1])))))
                 for i in range(8)]
  w_norm = np.sqrt(sum(np.sum(np.square(np.asarray(p, np.float64)))
                       for p in jax.tree.leaves(params)))
  ratio = 0.01 * w_norm / np.mean(per_example)
  np.testing.assert_allclose(float(state[0].ratios["layer"]), ratio, rtol=1e-5)
  for k in params:
    np.testing.assert_allclose(np.asarray(u[k]), -ratio * np.asarray(grads[k]),
                               rtol=1e-5, atol=1e-7)


def test_telemetry_under_jit_with_inject_hyperparams():
  tx = optax.inject_hyperparams(normopt.lars)(learning_rate=0.3,
                                              trust_coefficient=0.5, mask=None)
  w = {"k": jnp.full((2, 2), 2.0), "b": jnp.ones(2)}
  g = {"k": jnp.full((2, 2), 0.5), "b": jnp.ones(2)}

  @jax.jit
  def step(state):
    _, state = tx.update(g, state, w)
    return normopt.telemetry(state)

  info = step(tx.init(w))["trust_ratio_0"]
  np.testing.assert_allclose(float(info["ratios"]["k"]), 0.5 * 4.0 / 1.0)
  np.testing.assert_allclose(float(info["effective_learning_rate"]["k"]),
                             0.3 * 2.0, rtol=1e-6)
  assert normopt.TRUST_STATUS[int(info["status"]["b"])] == "masked_out"


def test_telemetry_finds_normalizing_links():
  tx = optax.chain(normopt.sngm(0.1), normopt.block_sngm(0.1))
  g = {"a": jnp.array([3.0, 4.0])}
  _, state = tx.update(g, tx.init(g), g)
  info = normopt.telemetry(state)
  np.testing.assert_allclose(float(info["normalize_global_0"]["norm"]), 5.0)
  assert set(info) == {"normalize_global_0", "normalize_per_block_0"}


def test_trust_coefficient_must_be_positive():
  with pytest.raises(ValueError, match="trust_coefficient"):
    normopt.trust_ratio("lars", trust_coefficient=0.0)
  with pytest.raises(ValueError, match="kind"):
    normopt.trust_ratio("lamb")


def _documented_args(doc: str) -> set[str]:
  lines = doc.splitlines()
  if "  Args:" not in lines:
    return set()
  names, start = set(), lines.index("  Args:") + 1
  for line in lines[start:]:
    if line and not line.startswith("    "):
      break
    if line.startswith("    ") and not line.startswith("     ") and ":" in line:
      names.add(line.strip().split(":")[0].split(" ")[0])
  return names


@pytest.mark.parametrize("name", sorted(
    n for n in normopt.__all__
    if inspect.isfunction(getattr(normopt, n))))
def test_docstring_documents_every_argument_and_has_an_example(name):
  fn = getattr(normopt, name)
  doc = fn.__doc__
  params = set(inspect.signature(fn).parameters)
  assert params <= _documented_args(doc), params - _documented_args(doc)
  assert (">>>" in doc and "References:" in doc) or name in (
      "assert_replicated", "exclude_bias_and_norm", "telemetry",
      "norm_probes", "per_example_block_norms", "probed", "igt_true_params",
      "noise_scale_of")


def test_telemetry_of_an_nnx_optimizer_holds_plain_arrays():
  from flax import nnx
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, normopt.lars(0.1), wrt=nnx.Param)
  info = normopt.telemetry(optimizer.opt_state)
  leaves = jax.tree.leaves(info, is_leaf=lambda x: isinstance(
      x, (nnx.Variable, nnx.State)))
  assert leaves and all(isinstance(x, jax.Array) for x in leaves)
  assert isinstance(info["trust_ratio_0"]["ratios"], dict)
  assert set(info["trust_ratio_0"]["ratios"]) == {"kernel", "bias"}


@pytest.mark.parametrize("name", ["lars", "clars", "lamb"])
def test_a_trust_ratio_mask_that_selects_nothing_warns(name):
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  tx = getattr(normopt, name)(0.1, mask={"w": False, "b": False})
  with pytest.warns(UserWarning, match="selects none of the 2 leaves"):
    tx.init(params)


def test_a_negative_schedule_is_caught_at_step_zero():
  with pytest.raises(ValueError, match="learning_rate"):
    normopt.sngm(lambda count: -0.1 + 0.0 * count)
  normopt.sngm(optax.cosine_decay_schedule(0.1, 100))  # fine
