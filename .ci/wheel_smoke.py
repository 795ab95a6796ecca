"""Run against an installed wheel, outside the repository: the core imports
without flax, and every method builds and takes one jitted step."""

import importlib.util

import jax
import jax.numpy as jnp
import optax

import normopt

assert importlib.util.find_spec("flax") is None, "flax must not be required"
assert "site-packages" in normopt.__file__, normopt.__file__

params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
extra = {
    "clars": {"per_example_norms": jax.tree.map(lambda g: jnp.ones(()),
                                                params)},
    "adaptive_nigt": {"second_grads": grads},
}
methods = ["sngm", "sngd", "block_sngm", "lars", "clars", "lamb",
           "normalized_sgdm", "nigt", "adaptive_nigt", "qhm", "nshb", "snag",
           "signum", "muon", "scion"]
for name in methods:
  tx = getattr(normopt, name)(learning_rate=0.1)

  @jax.jit
  def step(params, state, tx=tx, name=name):
    updates, state = tx.update(grads, state, params, **extra.get(name, {}))
    return optax.apply_updates(params, updates), state

  new, _ = step(params, tx.init(params))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new))
# batch growth: micro-batches accumulate, with noise-scale estimates
def loss(p, b):
  return jnp.mean((b["x"] @ p["w"] + p["b"] - b["y"]) ** 2)


tx = normopt.batch_growth(normopt.sngm(0.1), micro_batch=4, max_batch=16)
state = tx.init(params)
batch = {"x": jnp.ones((4, 4)), "y": jnp.zeros((4, 3))}
for _ in range(3):
  _, g, est = normopt.gradient_noise_scale(loss, params, batch)
  _, state = jax.jit(tx.update)(g, state, params, noise_estimate=est)
assert int(state.multi_steps.gradient_step) == 3
print(f"normopt {normopt.__version__}: {len(methods)} methods and batch "
      "growth stepped from the wheel")
