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
           "normalized_sgdm", "nigt", "adaptive_nigt", "qhm", "nshb", "snag"]
for name in methods:
  tx = getattr(normopt, name)(learning_rate=0.1)

  @jax.jit
  def step(params, state, tx=tx, name=name):
    updates, state = tx.update(grads, state, params, **extra.get(name, {}))
    return optax.apply_updates(params, updates), state

  new, _ = step(params, tx.init(params))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new))
print(f"normopt {normopt.__version__}: {len(methods)} methods stepped from "
      "the wheel")
