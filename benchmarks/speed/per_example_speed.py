"""CLARS's per-example norms: cost relative to a plain gradient step.

Times, in one run and interleaved, on the example 1-D CNN (MNIST-1D shapes,
three unfolded convolutions + two dense layers, 32k params):

* ``grad``: ``value_and_grad`` of the mean loss (what LARS pays);
* ``exact``: :func:`normopt.per_example_block_norms`, ``vmap`` of ``grad``
  over the whole batch;
* ``exact_chunked``: the same, ``--chunk`` examples at a time (bounded
  memory);
* ``probed``: the probe path (outer-product / Gram identities, one backward
  pass).

Each returns the loss and the mean gradient; the last three also the norms.

    python -m benchmarks.speed.per_example_speed                # batch 256 and 1024
    python -m benchmarks.speed.per_example_speed --batch 4096 --reps 10 --json o.json
"""

from __future__ import annotations

import argparse

import jax
import optax
from flax import nnx

import normopt
from benchmarks import models
from benchmarks.speed.timing import finish, interleaved_medians


def measure(batch: int, reps: int, chunk: int) -> list[dict]:
  model = models.make("cnn1d", (40, 1), 10, 0)
  graphdef, params = nnx.split(model)
  key_x, key_y = jax.random.split(jax.random.PRNGKey(0))
  data = (jax.random.normal(key_x, (batch, 40, 1)),
          jax.random.randint(key_y, (batch,), 0, 10))

  def loss_fn(p, b, probes=None):
    m = nnx.merge(graphdef, p)
    logits = m(b[0], probes) if probes is not None else m(b[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean()

  fns = {
      "grad": jax.jit(jax.value_and_grad(loss_fn)),
      "exact": jax.jit(lambda p, b: normopt.per_example_block_norms(
          loss_fn, p, b)),
      "exact_chunked": jax.jit(lambda p, b: normopt.per_example_block_norms(
          loss_fn, p, b, chunk_size=min(chunk, batch))),
      "probed": jax.jit(lambda p, b: normopt.per_example_block_norms(
          loss_fn, p, b, probed=True)),
      "noise_scale_probed": jax.jit(lambda p, b: normopt.gradient_noise_scale(
          loss_fn, p, b, probed=True)),
  }
  med = interleaved_medians(
      {name: (lambda f=f: f(params, data)) for name, f in fns.items()}, reps)
  return [{"batch": batch, "path": name, "median_ms": 1e3 * t,
           "vs_grad": t / med["grad"]} for name, t in med.items()]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
  parser.add_argument("--reps", type=int, default=30)
  parser.add_argument("--chunk", type=int, default=64)
  parser.add_argument("--json", default=None, help="write the rows here")
  args = parser.parse_args(argv)
  rows = [r for b in args.batch for r in measure(b, args.reps, args.chunk)]
  print("| batch | path | median ms | × grad |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['batch']} | {r['path']} | {r['median_ms']:.2f} | "
          f"{r['vs_grad']:.2f} |")
  finish(rows, args.json, f"reps {args.reps}, chunk {args.chunk}")


if __name__ == "__main__":
  main()
