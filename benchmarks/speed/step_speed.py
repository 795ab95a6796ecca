"""Optimizer step speed: normopt vs the equivalent optax chains vs a fused axpy.

An optimizer step is memory bound: its floor is the time to stream the
param, gradient and state buffers once. Every candidate is a jitted
``update + apply_updates`` with params and state donated; all candidates of a
tree are timed in one run, interleaved (round-robin over candidates, each
round in a fresh order), and reported as medians and as ratios to the fused
axpy ``w - lr*g`` (3 streams: read w, read g, write w) and to the optax
equivalent. ``floor`` is each method's stream count / 3.

    python -m benchmarks.speed.step_speed                      # all trees
    python -m benchmarks.speed.step_speed --trees resnet50 --reps 30 --json out.json
"""

from __future__ import annotations

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import normopt
from benchmarks.speed.timing import finish, interleaved_medians

LR, BETA = 0.1, 0.9


def resnet50_shapes() -> list[tuple[int, ...]]:
  """Conv kernels, batch-norm scales/offsets and the head of ResNet-50."""
  shapes = [(7, 7, 3, 64), (64,), (64,)]
  cin = 64
  for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
    for b in range(blocks):
      shapes += [(1, 1, cin, width), (width,), (width,),
                 (3, 3, width, width), (width,), (width,),
                 (1, 1, width, 4 * width), (4 * width,), (4 * width,)]
      if b == 0:
        shapes += [(1, 1, cin, 4 * width), (4 * width,), (4 * width,)]
      cin = 4 * width
  return [*shapes, (2048, 1000), (1000,)]


def transformer_shapes(blocks: int = 24, d: int = 256) -> list[tuple[int, ...]]:
  shapes = [(32000, d)]
  for _ in range(blocks):
    shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
               (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
  return [*shapes, (d,), (d,)]


def small_leaves_shapes(n: int = 1000) -> list[tuple[int, ...]]:
  return [(32, 32)] * n


TREES = {"resnet50": resnet50_shapes, "transformer": transformer_shapes,
         "small_leaves": small_leaves_shapes,
         "tiny": lambda: [(16, 8), (8,), ()]}  # smoke runs only


def make_tree(shapes, seed):
  rng = np.random.default_rng(seed)
  return {f"p{i:04d}": jnp.asarray(rng.standard_normal(s), jnp.float32)
          for i, s in enumerate(shapes)}


def conv_views(params):
  """Muon's dimension numbers reading conv kernels ``(kh, kw, in, out)`` as
  ``(kh·kw·in, out)`` matrices and dense kernels as ``(in, out)``; None (to
  Adam) for the rest. The same tree goes to normopt and optax."""
  mdn = optax.contrib.MuonDimensionNumbers
  return jax.tree.map(lambda p: mdn((0, 1, 2), 3) if p.ndim == 4
                      else mdn() if p.ndim == 2 else None, params)


def candidates(params):
  """name -> (optimizer, optax equivalent's name or None, stream count)."""
  per_example = jax.tree.map(lambda p: jnp.ones((), jnp.float32), params)
  with_convs = any(p.ndim == 4 for p in jax.tree.leaves(params))
  views = conv_views(params)
  sngm_optax = optax.chain(optax.normalize_by_update_norm(eps=0.0),
                           optax.trace(BETA), optax.scale_by_learning_rate(LR))
  nsgdm_optax = optax.chain(optax.ema(BETA, debias=False),
                            optax.normalize_by_update_norm(eps=0.0),
                            optax.scale_by_learning_rate(LR))
  return {
      # baselines
      "optax.sgd(momentum)": (optax.sgd(LR, BETA), None, 5, {}),
      # normopt and its optax equivalent, side by side
      "sngm": (normopt.sngm(LR, beta=BETA), "optax sngm chain", 6, {}),
      "optax sngm chain": (sngm_optax, None, 6, {}),
      "sngd": (normopt.sngd(LR), None, 4, {}),
      "block_sngm": (normopt.block_sngm(LR, beta=BETA), None, 6, {}),
      "lars": (normopt.lars(LR, momentum=BETA, mask=True), "optax.lars", 7, {}),
      "optax.lars": (optax.lars(LR, momentum=BETA), None, 7, {}),
      "clars": (normopt.clars(LR, momentum=BETA, mask=True), "optax.lars", 6,
                {"per_example_norms": per_example}),
      "lamb": (normopt.lamb(LR, mask=True), "optax.lamb", 7, {}),
      "optax.lamb": (optax.lamb(LR), None, 7, {}),
      "normalized_sgdm": (normopt.normalized_sgdm(LR, beta=BETA),
                          "optax nsgdm chain", 6, {}),
      "optax nsgdm chain": (nsgdm_optax, None, 6, {}),
      "nigt": (normopt.nigt(LR, beta=BETA), None, 8, {}),
      "qhm": (normopt.qhm(LR, beta=BETA, nu=0.7), None, 5, {}),
      "snag": (normopt.snag(LR, beta=BETA), "optax.sgd(nesterov)", 5, {}),
      "optax.sgd(nesterov)": (optax.sgd(LR * (1 - BETA), BETA, nesterov=True),
                              None, 5, {}),
      "nshb": (normopt.nshb(LR, beta=BETA), "optax.sgd(momentum)", 5, {}),
      # steepest descent under other norms (matrices: Newton-Schulz matmuls,
      # compute- rather than bandwidth-bound; the floor counts streams only)
      "signum": (normopt.signum(LR, beta=BETA), "optax.signum", 5, {}),
      "optax.signum": (optax.signum(LR, beta=BETA), None, 5, {}),
      # defaults: 2-D leaves orthogonalized, the rest to Adam, in both
      "muon": (normopt.muon(LR), "optax.contrib.muon", 6, {}),
      "optax.contrib.muon": (optax.contrib.muon(LR), None, 6, {}),
      "normuon": (normopt.normuon(LR), "optax.contrib.muon", 6, {}),
      "scion": (normopt.scion(LR, unconstrained=True), "optax.contrib.muon",
                5, {}),
      # conv kernels orthogonalized too, the same dimension numbers in both
      **({"muon (conv views)": (
          normopt.muon(LR, weight_dimension_numbers=views),
          "optax muon (conv views)", 6, {}),
          "optax muon (conv views)": (optax.contrib.muon(
              LR, muon_weight_dimension_numbers=views), None, 6, {})}
         if with_convs else {}),
  }


def _step_fn(tx, extra):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


class _Runner:
  """A jitted step with donated params/state, advanced in place."""

  def __init__(self, step, params0, tx, ref, streams):
    self.fn, self.ref, self.streams = step, ref, streams
    self.params = jax.tree.map(jnp.copy, params0)
    self.state = tx.init(self.params) if tx is not None else None

  def step(self, grads):
    self.params, self.state = self.fn(self.params, self.state, grads)
    return self.params, self.state


def measure(tree: str, reps: int, only=None) -> list[dict]:
  shapes = TREES[tree]()
  grads = make_tree(shapes, 1)
  params0 = make_tree(shapes, 0)
  runners = {}
  for name, (tx, ref, streams, extra) in candidates(params0).items():
    if not only or name in only:
      runners[name] = _Runner(_step_fn(tx, extra), params0, tx, ref, streams)
  axpy = jax.jit(lambda w, g: jax.tree.map(lambda a, b: a - LR * b, w, g),
                 donate_argnums=0)
  runners["axpy"] = _Runner(lambda w, _, g: (axpy(w, g), None), params0,
                            None, None, 3)
  med = interleaved_medians(
      {name: (lambda r=r: r.step(grads)) for name, r in runners.items()}, reps)
  n_params = sum(int(np.prod(s)) for s in shapes)
  return [{"tree": tree, "leaves": len(shapes), "params": n_params,
           "method": name, "median_ms": 1e3 * med[name],
           "vs_axpy": med[name] / med["axpy"], "floor": r.streams / 3,
           "vs_optax": (med[name] / med[r.ref]) if r.ref in med else None,
           "optax_equivalent": r.ref} for name, r in runners.items()]


TRAIN_STEP_METHODS = ("optax.sgd(momentum)", "sngm", "lars", "nigt", "qhm")


def measure_train_step(reps: int, width: int = 4096, batch: int = 256
                       ) -> list[dict]:
  """A whole training step (loss, grad and update in one jit, params and
  state donated) of a 1024-width-width-10 MLP (~21M params), against the
  gradient alone: the optimizer's share of a step."""
  rng = np.random.default_rng(0)
  sizes = [1024, width, width, 10]
  params0 = {f"l{i}": {"w": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a),
                                        jnp.float32),
                       "b": jnp.zeros((b,), jnp.float32)}
             for i, (a, b) in enumerate(itertools.pairwise(sizes))}
  x = jnp.asarray(rng.standard_normal((batch, sizes[0])), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch))

  def loss_fn(params):
    h = x
    for i in range(len(sizes) - 1):
      h = h @ params[f"l{i}"]["w"] + params[f"l{i}"]["b"]
      h = jax.nn.relu(h) if i < len(sizes) - 2 else h
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

  grad_only = jax.jit(jax.value_and_grad(loss_fn))
  runners = {"grad only": _Runner(lambda p, s, _: (p, grad_only(p)), params0,
                                  None, None, 0)}
  all_candidates = candidates(params0)
  for name in TRAIN_STEP_METHODS:
    tx = all_candidates[name][0]

    def step(params, state, _, tx=tx):
      grads = jax.grad(loss_fn)(params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state
    runners[name] = _Runner(jax.jit(step, donate_argnums=(0, 1)), params0, tx,
                            None, 0)
  med = interleaved_medians(
      {name: (lambda r=r: r.step(None)) for name, r in runners.items()}, reps)
  n_params = sum(x.size for x in jax.tree.leaves(params0))
  return [{"model": f"MLP 1024-{width}-{width}-10", "params": n_params,
           "batch": batch, "method": name, "median_ms": 1e3 * t,
           "optimizer_share": 1 - med["grad only"] / t} for name, t in
          med.items()]


def table(rows) -> str:
  lines = ["| tree | method | median ms | × axpy | floor | × optax equivalent |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    vs = (f"{r['vs_optax']:.2f} ({r['optax_equivalent']})"
          if r["vs_optax"] is not None else "")
    lines.append(f"| {r['tree']} | {r['method']} | {r['median_ms']:.2f} | "
                 f"{r['vs_axpy']:.2f} | {r['floor']:.2f} | {vs} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trees", nargs="+",
                      default=["resnet50", "transformer", "small_leaves"],
                      choices=list(TREES))
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--only", nargs="*", default=None,
                      help="time only these candidates (and axpy)")
  parser.add_argument("--json", default=None, help="write the rows here")
  parser.add_argument("--train_step", action="store_true",
                      help="also time whole training steps of an MLP")
  parser.add_argument("--width", type=int, default=4096,
                      help="hidden width of the --train_step MLP")
  args = parser.parse_args(argv)
  rows = []
  for tree in args.trees:
    rows += measure(tree, args.reps, args.only)
  print(table(rows))
  if args.train_step:
    steps = measure_train_step(args.reps, args.width)
    print(f"\nWhole training step, {steps[0]['model']} "
          f"({steps[0]['params'] / 1e6:.1f}M params), batch {steps[0]['batch']}")
    print("| step | median ms | optimizer share |\n|---|---|---|")
    for r in steps:
      print(f"| {r['method']} | {r['median_ms']:.1f} | "
            f"{100 * r['optimizer_share']:.1f}% |")
    rows += steps
  finish(rows, args.json, f"optax {optax.__version__}, reps {args.reps}")


if __name__ == "__main__":
  main()
