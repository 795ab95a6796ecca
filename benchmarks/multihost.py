"""Multi-host data parallel training: one copy of this script per process.

Every process runs the same program over one global mesh of all devices
(``jax.distributed``; on CPU the gloo collectives). The batch is sharded
over the ``data`` axis, params and optimizer state are replicated, and
``jit`` inserts the gradient all-reduce, so the normalization sees the
global gradient, never a per-process one.

    # two processes with 2 CPU devices each, on one machine:
    for i in 0 1; do
      XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
      python -m benchmarks.multihost --coordinator 127.0.0.1:12355 \\
          --num_processes 2 --process_id $i --method sngm --out final.npz &
    done; wait

On a real cluster drop the flags that ``jax.distributed.initialize`` can
detect (SLURM, Cloud TPU, ...).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import normopt

METHODS = {"sngm": lambda: normopt.sngm(0.05, beta=0.9),
           "nigt": lambda: normopt.nigt(0.05, beta=0.9)}
FEATURES, HIDDEN, CLASSES, BATCH = 8, 16, 4, 32


def _data(steps: int, seed: int = 0):
  """The same global batches on every process (a fixed random problem)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((steps, BATCH, FEATURES)).astype(np.float32)
  teacher = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
  return x, np.argmax(x @ teacher, -1).astype(np.int32)


def _init(seed: int = 1):
  rng = np.random.default_rng(seed)
  draw = lambda *s: (0.3 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
  return {"w1": draw(FEATURES, HIDDEN), "b1": np.zeros(HIDDEN, np.float32),
          "w2": draw(HIDDEN, CLASSES), "b2": np.zeros(CLASSES, np.float32)}


def _loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(method: str, steps: int, devices=None) -> dict[str, np.ndarray]:
  """Data parallel over ``devices`` (default: every device of every process);
  returns the final params as NumPy arrays."""
  devices = jax.devices() if devices is None else devices
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  replicated = NamedSharding(mesh, P())
  batched = NamedSharding(mesh, P(None, "data"))
  x, y = _data(steps)
  # Each process materialises only the shards its own devices hold.
  put = lambda a, s: jax.make_array_from_callback(  # noqa: E731
      a.shape, s, lambda idx: a[idx])
  xs, ys = put(x, batched), put(y, batched)
  params = {k: put(v, replicated) for k, v in _init().items()}
  tx = METHODS[method]()

  @jax.jit
  def run(params, xs, ys):
    def step(carry, batch):
      params, state = carry
      grads = jax.grad(_loss)(params, *batch)  # global mean: all-reduced
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), (xs, ys))
    return jax.lax.with_sharding_constraint(params, replicated)

  out = run(params, xs, ys)
  normopt.assert_replicated(out)
  return {k: np.asarray(v.addressable_shards[0].data) for k, v in out.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--coordinator", required=True, help="host:port")
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--method", choices=sorted(METHODS), default="sngm")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--out", default=None,
                      help="process 0 writes the final params here (.npz)")
  args = parser.parse_args(argv)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(args.coordinator, args.num_processes,
                             args.process_id)
  params = train(args.method, args.steps)
  print(f"process {jax.process_index()}/{jax.process_count()}: "
        f"{jax.local_device_count()} local of {jax.device_count()} devices, "
        f"{args.method} {args.steps} steps done", flush=True)
  if args.out and jax.process_index() == 0:
    np.savez(args.out, **params)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
