"""Train a Flax NNX model with any normopt method or optax baseline.

``python -m benchmarks.main --help`` runs it from flags. The logic lives here:
:func:`train_step` (one optimizer step, called by the epoch loop and by the
tests), :func:`eval_step`, and :func:`train_and_evaluate`. Data stay on the
device and each epoch is one jitted ``lax.scan`` over its mini-batches.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import normopt
from benchmarks import data as data_lib
from benchmarks import models, report
from normopt import schedules


@dataclasses.dataclass(frozen=True)
class Config:
  """All defaults in one place (the MNIST-1D large-batch setting)."""
  dataset: str = "mnist1d"
  data_dir: str | None = None
  num_samples: int = 50_000
  model: str = "cnn1d"
  method: str = "sngm"
  learning_rate: float = 0.2
  beta: float = 0.9  # momentum / β of every method
  nu: float = 0.7  # QHM
  trust_coefficient: float = 0.001  # LARS / CLARS
  # LARS / CLARS: the trust ratio on every leaf (mask=True, the default);
  # False: the papers' exclusion of biases and norm params (mask=None)
  mask_all: bool = True
  unconstrained: bool = False  # Scion: drop its (1 - lr) shrinkage
  # Muon / NorMuon: Newton-Schulz coefficients (a normopt preset), update
  # RMS (None: Jordan et al.'s shape factor), and the matrix views: "layers"
  # (normopt.flax_weight_dimension_numbers) or "flattened" (every 2+-D leaf
  # but the embedding and head as reshape(-1, last), normopt's view before
  # dimension numbers: it mixes the heads axis of q/k/v into the rows)
  ns_coeffs: str = "standard"
  consistent_rms: float | None = None
  muon_view: str = "layers"
  # clip the gradient to this global norm before the method (the SNGM
  # paper's momentum SGD on language models)
  clip_norm: float | None = None
  noise_scale: bool = False  # track the gradient noise scale (logged per epoch)
  weight_decay: float = 1e-4
  schedule: str = "cosine"  # constant|cosine|polynomial|sqrt_decay|inverse_decay
  warmup_epochs: int = 0
  batch_size: int = 128
  epochs: int = 20
  seed: int = 0
  train_subset: int | None = None  # use only the first N training examples
  # hold out the last N training examples: hyperparameters are selected on
  # their accuracy (validation_accuracy), never on the test set's
  validation: int = 0
  # none | pmap | mesh (data parallel, all devices) | sharded (mesh, with
  # params and optimizer state sharded across the devices, FSDP-style)
  parallel: str = "none"
  # Growing batch (QHM paper): batch_size * batch_growth^⌊epoch/growth_interval⌋
  # capped at max_batch, realised by accumulating micro_batch-sized passes.
  micro_batch: int | None = None
  batch_growth: float = 1.0
  growth_interval: int = 1
  max_batch: int | None = None
  # Measured growth instead (normopt.batch_growth): from batch_size by factors
  # of batch_growth up to max_batch as the measured noise scale grows
  # (constant learning rate; every micro_batch pass measures the noise scale).
  measured_growth: bool = False
  # "fixed", or "seesaw" (normopt.seesaw_schedule): where the step-keyed
  # schedule would cut the learning rate by batch_growth (default 2), cut it
  # by its square root (momentum SGD, QHM, NSHB, SNAG: not at all) and
  # multiply the batch (from batch_size, in micro_batch passes, up to
  # max_batch) instead
  batch_schedule: str = "fixed"
  # A batch per epoch instead (the last repeats; in micro_batch passes), with
  # the learning rate scaled by (batch / batch_size)^γ as the batch grows
  # (γ = 1 for momentum SGD, QHM, NSHB, SNAG, else 1/2): the warmup that
  # benchmarks.branched measures from the local critical batch
  epoch_batches: tuple[int, ...] | None = None
  resume: bool = False  # continue from the latest checkpoint in the workdir
  stop_after: int | None = None  # stop after this epoch (simulates pre-emption)


# The optax baselines (config, learning rate, model); every other method is
# normopt.<name>.
_OPTAX_BASELINES = {
    # weight decay is added to the gradient, as in the normopt methods
    "msgd": lambda c, lr, _: optax.chain(
        optax.add_decayed_weights(c.weight_decay),
        optax.sgd(lr, momentum=c.beta)),
    "optax_lars": lambda c, lr, _: optax.lars(
        lr, weight_decay=c.weight_decay, trust_coefficient=c.trust_coefficient,
        momentum=c.beta),
    "adamw": lambda c, lr, _: optax.adamw(lr, b1=c.beta,
                                          weight_decay=c.weight_decay),
    # optax's Muon on the same matrix views (its own defaults otherwise)
    "optax_muon": lambda c, lr, model: optax.contrib.muon(
        lr, beta=c.beta, weight_decay=c.weight_decay,
        consistent_rms=c.consistent_rms,
        muon_weight_dimension_numbers=(
            None if model is None else muon_dimension_numbers(model,
                                                              c.muon_view))),
}
# normopt methods this example trains (adaptive NIGT needs a second gradient).
_NORMOPT_METHODS = ("sngm", "sngd", "block_sngm", "lars", "clars", "lamb",
                    "normalized_sgdm", "nigt", "qhm", "nshb", "snag",
                    "signum", "muon", "normuon", "scion")


def method_names() -> list[str]:
  return sorted([*_OPTAX_BASELINES, *_NORMOPT_METHODS])


def build_optimizer(name: str, config: Config, learning_rate, model=None):
  """``normopt.<name>(learning_rate=..., **keywords)``, the keywords being
  the config fields the method takes (``momentum`` is ``config.beta``);
  only the optax baselines are special-cased. ``model`` (a Flax NNX
  module) gives Muon, NorMuon and Scion their matrix views."""
  if name in _OPTAX_BASELINES:
    return _OPTAX_BASELINES[name](config, learning_rate, model)
  if name not in _NORMOPT_METHODS:
    raise ValueError(f"unknown method {name!r}; choose one of "
                     f"{', '.join(method_names())}")
  factory = getattr(normopt, name)
  values = {**dataclasses.asdict(config), "momentum": config.beta}
  if name in ("lars", "clars"):
    values["mask"] = True if config.mask_all else None
  if name in ("muon", "normuon", "scion") and model is not None:
    values["weight_dimension_numbers"] = muon_dimension_numbers(
        model, config.muon_view)
  taken = inspect.signature(factory).parameters
  return factory(learning_rate=learning_rate,
                 **{k: v for k, v in values.items()
                    if k in taken and k != "learning_rate"})


# The layers Muon's reference leaves to AdamW: input embeddings and head.
_TO_ADAMW = ("embed", "head")


def muon_dimension_numbers(model, view: str = "layers"):
  """Muon's matrix views here, as a callable on the params that looks each
  leaf up by its path (the trainer's params are the model's whole
  ``nnx.split`` state). ``view="layers"``:
  ``normopt.flax_weight_dimension_numbers`` of the model with the layers
  named ``embed`` and ``head`` (input embeddings and output layer, which
  Muon's reference leaves to AdamW) excluded. ``view="flattened"``: every
  leaf of 2 or more dimensions outside those layers as
  ``reshape(-1, shape[-1])`` (normopt's view before dimension numbers; on
  ``nnx.MultiHeadAttention`` it is wrong for q/k/v, kept to measure what
  that cost)."""
  if view == "flattened":
    excluded = tuple(f"['{name}']" for name in _TO_ADAMW)

    def flattened(params):
      return jax.tree.structure(params).unflatten([
          None if p.startswith(excluded) or jnp.ndim(x) < 2
          else optax.contrib.MuonDimensionNumbers(
              tuple(range(jnp.ndim(x) - 1)), jnp.ndim(x) - 1)
          for p, x in zip(leaf_paths(params), jax.tree.leaves(params))])
    return flattened
  if view != "layers":
    raise ValueError(f"muon_view must be 'layers' or 'flattened', got {view!r}")
  dims = normopt.flax_weight_dimension_numbers(model, exclude=_TO_ADAMW)
  by_path = dict(zip(leaf_paths(dims), jax.tree.leaves(
      dims, is_leaf=_is_dims)))

  def lookup(params):
    return jax.tree.structure(params).unflatten(
        [by_path.get(p) for p in leaf_paths(params)])
  return lookup


def _is_dims(x) -> bool:
  return x is None or isinstance(x, optax.contrib.MuonDimensionNumbers)


def leaf_paths(tree) -> list[str]:
  """Each leaf's path (an NNX Variable's ``.value`` dropped), with None and
  dimension numbers as leaves."""
  return [jax.tree_util.keystr(tuple(
      k for k in p if getattr(k, "name", None) != "value"))
          for p, _ in jax.tree_util.tree_flatten_with_path(
              tree, is_leaf=_is_dims)[0]]


class Plan(NamedTuple):
  """How an epoch is cut: ``steps`` passes of ``pass_batch`` examples each.

  Without growth a pass is an optimizer step. With ``micro_batch`` set, the
  optimizer is wrapped in ``optax.MultiSteps`` and applies once per
  ``b_m / micro_batch`` passes; ``epoch_of`` maps optimizer steps to epochs.
  """
  steps: int
  pass_batch: int
  epoch_of: Callable[[jax.Array], jax.Array]
  batch_schedule: Callable[[jax.Array], jax.Array] | None


_EPOCH_SCHEDULES = {
    "constant": lambda c: schedules.constant(c.learning_rate),
    "cosine": lambda c: schedules.cosine(c.learning_rate, c.epochs),
    "polynomial": lambda c: schedules.polynomial(c.learning_rate, c.epochs),
    "sqrt_decay": lambda c: schedules.sqrt_decay(c.learning_rate),
    "inverse_decay": lambda c: schedules.inverse_decay(c.learning_rate),
}


def make_schedule(config: Config, plan: Plan) -> optax.Schedule:
  """Step-keyed (smooth) constant/cosine/polynomial schedules with optional
  warmup (Seesaw's learning rate with ``batch_schedule="seesaw"``);
  epoch-keyed ones (the QHM paper's) for the decays and whenever the batch
  grows by epoch."""
  if config.schedule not in _EPOCH_SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; choose "
                     f"{', '.join(_EPOCH_SCHEDULES)}")
  if config.batch_schedule == "seesaw":
    return seesaw(config, plan).learning_rate
  if plan.batch_schedule is not None or config.schedule.endswith("decay"):
    if config.warmup_epochs:
      raise ValueError("warmup_epochs needs a step-keyed schedule (constant, "
                       "cosine or polynomial) and a fixed batch size")
    rate = _EPOCH_SCHEDULES[config.schedule](config)
    if config.epoch_batches is None:
      return schedules.per_step(rate, plan.epoch_of)
    exponent = batch_exponent(config.method)
    return schedules.per_step(lambda m: rate(m) * (
        plan.batch_schedule(m) / config.batch_size) ** exponent,
        plan.epoch_of)
  return _step_schedule(config, plan.steps)


def _step_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  lr = config.learning_rate
  warmup = config.warmup_epochs * steps_per_epoch
  decay_steps = max(config.epochs * steps_per_epoch - warmup, 1)
  main = {"constant": lambda: optax.constant_schedule(lr),
          "cosine": lambda: optax.cosine_decay_schedule(lr, decay_steps),
          "polynomial": lambda: optax.polynomial_schedule(
              lr, 0.0, 2.0, decay_steps)}[config.schedule]()
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])


# Methods whose step is linear in the gradient: Seesaw trades a rate cut by
# the batch factor for the batch factor (exponent 1), not its square root.
_LINEAR_IN_GRADIENT = ("msgd", "qhm", "nshb", "snag")


def batch_exponent(method: str) -> float:
  """γ of the coupling ``learning rate ∝ batch^γ`` for ``method``: 1 where
  the step is linear in the gradient (the linear scaling rule), 1/2 for the
  normalized and Adam-like methods (the square-root rule)."""
  return 1.0 if method in _LINEAR_IN_GRADIENT else 0.5


def seesaw(config: Config, plan: Plan) -> normopt.SeesawSchedule:
  """``normopt.seesaw_schedule`` of the step-keyed schedule over the epochs
  at ``batch_size``, in ``micro_batch`` passes up to ``max_batch``."""
  per_epoch = plan.steps * plan.pass_batch // config.batch_size
  return normopt.seesaw_schedule(
      _step_schedule(config, per_epoch), config.epochs * per_epoch,
      micro_batches=config.batch_size // config.micro_batch,
      max_micro_batches=config.max_batch // config.micro_batch,
      factor=int(config.batch_growth) if config.batch_growth > 1 else 2,
      batch_exponent=batch_exponent(config.method))


def make_optimizer(config: Config, plan: Plan, learning_rate=None,
                   model=None):
  """The configured optimizer; ``learning_rate`` (a number or a traced value,
  as in :func:`train_population`) replaces ``config.learning_rate`` as the
  peak of the schedule; ``model`` as in :func:`build_optimizer`."""
  if learning_rate is None:
    schedule = make_schedule(config, plan)
  else:
    unit = make_schedule(dataclasses.replace(config, learning_rate=1.0), plan)
    schedule = lambda count: learning_rate * unit(count)  # noqa: E731
  tx = build_optimizer(config.method, config, schedule, model)
  if config.clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  if config.noise_scale:
    tx = optax.chain(normopt.track_noise_scale(0.95), tx)
  if config.measured_growth:
    return normopt.batch_growth(
        tx, micro_batch=config.micro_batch, max_batch=config.max_batch,
        growth=int(config.batch_growth), min_batch=config.batch_size)
  if config.batch_schedule == "seesaw":
    return optax.MultiSteps(tx, seesaw(config, plan).micro_batches)
  if plan.batch_schedule is None:
    return tx
  return optax.MultiSteps(tx, every_k_schedule=schedules.accumulation_steps(
      plan.batch_schedule, config.micro_batch, plan.epoch_of))


def make_plan(config: Config, n: int) -> Plan:
  """Validates the batch settings against ``n`` training examples."""
  if config.batch_size <= 0 or config.epochs <= 0:
    raise ValueError("batch_size and epochs must be positive")
  if config.learning_rate < 0:
    raise ValueError(f"learning_rate must be >= 0, got {config.learning_rate}")
  if config.batch_size > n:
    raise ValueError(f"batch_size {config.batch_size} exceeds the {n} "
                     "training examples")
  if config.noise_scale and (config.method == "clars" or (
      config.micro_batch and not config.measured_growth)):
    raise ValueError("noise_scale works with a fixed batch or measured "
                     "growth, and methods other than clars")
  if config.parallel not in ("none", "pmap", "mesh", "sharded"):
    raise ValueError(f"unknown parallel mode {config.parallel!r}; choose "
                     "none, pmap, mesh or sharded")
  devices = 1 if config.parallel == "none" else jax.local_device_count()
  pass_batch = config.micro_batch or config.batch_size
  if pass_batch % devices:
    raise ValueError(f"batch_size {pass_batch} does not divide by the "
                     f"{devices} local devices")
  if config.measured_growth:
    if (config.micro_batch is None or config.max_batch is None
        or config.method == "clars" or config.schedule != "constant"
        or config.warmup_epochs):
      raise ValueError("measured_growth needs micro_batch and max_batch, a "
                       "constant schedule without warmup, and a method other "
                       "than clars")
    if config.max_batch > n:
      raise ValueError(f"max_batch {config.max_batch} exceeds the {n} "
                       "training examples")
    steps = n // config.max_batch * config.max_batch // config.micro_batch
    return Plan(steps, config.micro_batch, lambda count: count * 0, None)
  if config.batch_schedule not in ("fixed", "seesaw"):
    raise ValueError(f"unknown batch_schedule {config.batch_schedule!r}; "
                     "choose fixed or seesaw")
  if config.batch_schedule == "seesaw":
    if (config.micro_batch is None or config.max_batch is None
        or config.batch_size % config.micro_batch
        or config.max_batch % config.batch_size
        or config.schedule.endswith("decay") or config.method == "clars"):
      raise ValueError("batch_schedule seesaw needs micro_batch dividing "
                       "batch_size, max_batch a multiple of batch_size, a "
                       "constant, cosine or polynomial schedule, and a method "
                       "other than clars")
    if config.max_batch > n:
      raise ValueError(f"max_batch {config.max_batch} exceeds the {n} "
                       "training examples")
    used = n // config.batch_size * config.batch_size
    return Plan(used // config.micro_batch, config.micro_batch,
                lambda count: count * 0, None)
  if config.epoch_batches is not None and config.micro_batch is None:
    raise ValueError("epoch_batches needs micro_batch (the batches are "
                     "accumulated in micro_batch passes)")
  if config.micro_batch is None:
    steps = n // config.batch_size
    return Plan(steps, config.batch_size, lambda count: count // steps, None)
  batch = epoch_batch_schedule(config)
  schedules.check_divisible(batch, config.micro_batch, config.epochs)
  largest = max(int(batch(m)) for m in range(config.epochs))
  if largest > n:
    raise ValueError(f"the batch grows to {largest}, more than the {n} "
                     "training examples; set max_batch")
  # Every epoch uses the same examples count, a multiple of the largest batch,
  # so each epoch is a whole number of optimizer steps.
  used = n // largest * largest
  return Plan(used // config.micro_batch, config.micro_batch,
              schedules.step_to_epoch(used, batch, config.epochs), batch)


def epoch_batch_schedule(config: Config) -> Callable[[jax.Array], jax.Array]:
  """The batch of each epoch: ``config.epoch_batches`` (the last repeating),
  or the exponential ramp from ``batch_size`` by ``batch_growth`` every
  ``growth_interval`` epochs up to ``max_batch``."""
  if config.epoch_batches is None:
    return schedules.exponential_batch(config.batch_size, config.batch_growth,
                                       config.growth_interval,
                                       config.max_batch)
  table = np.asarray(config.epoch_batches, np.int32)
  if table.ndim != 1 or not len(table) or table.min() < 1:
    raise ValueError("epoch_batches must be a non-empty sequence of positive "
                     f"batch sizes, got {config.epoch_batches}")
  return lambda m: jnp.asarray(table)[jnp.minimum(m, len(table) - 1)]


def train_step(params, opt_state, batch, *, tx, loss_fn,
               clars_norms: bool = False, noise_scale: bool = False,
               probed: bool = False, axis_name: str | None = None):
  """One optimizer step on ``batch = (x, y)``.

  Loss and gradients (and, for CLARS, the per-example block norms, from the
  probes in the same backward pass when ``probed``) of the batch, averaged
  over the replicas of ``axis_name`` *before* the optimizer (normalizing
  per replica and then averaging would give another direction), then
  ``tx.update`` and ``optax.apply_updates``. With ``noise_scale`` the
  gradient comes from :func:`normopt.gradient_noise_scale` (same pass) and
  its estimate goes to ``tx`` as ``noise_estimate`` (a
  ``normopt.track_noise_scale`` link).

  Returns:
    ``(params, opt_state, loss)``.
  """
  def mean_over_replicas(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  extra = {}
  if clars_norms:
    loss, grads, norms = normopt.per_example_block_norms(
        lambda p, b, *pr: loss_fn(p, *b, *pr), params, batch, probed=probed)
    extra = {"per_example_norms": mean_over_replicas(norms)}
  elif noise_scale:
    loss, grads, estimate = normopt.gradient_noise_scale(
        lambda p, b, *pr: loss_fn(p, *b, *pr), params, batch, probed=probed)
    extra = {"noise_estimate": mean_over_replicas(estimate)}
  else:
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
  loss, grads = mean_over_replicas((loss, grads))
  updates, opt_state = tx.update(grads, opt_state, params, **extra)
  return optax.apply_updates(params, updates), opt_state, loss


def accuracy(params, opt_state, examples, *, apply_fn, igt: bool = False):
  """Accuracy on ``examples = (x, y)``; NIGT is evaluated at its true
  iterate."""
  return scores(params, opt_state, examples, apply_fn=apply_fn,
                igt=igt)["accuracy"]


def scores(params, opt_state, examples, *, apply_fn, igt: bool = False,
           logits: bool = False) -> dict:
  """Accuracy and mean cross-entropy (``loss``, nats per target) on
  ``examples = (x, y)`` from one forward pass (with ``logits``, also the
  logits); NIGT is evaluated at its true iterate."""
  if igt:
    params = normopt.igt_true_params(params, opt_state)
  out = apply_fn(params, examples[0])
  result = {"accuracy": jnp.mean(jnp.argmax(out, -1) == examples[1]),
            "loss": optax.softmax_cross_entropy_with_integer_labels(
                out, examples[1]).mean()}
  return result | ({"logits": out} if logits else {})


def eval_step(params, opt_state, *, apply_fn, loss_fn, test, probe,
              igt: bool = False):
  """Test accuracy, and the training-loss gradient norm on the ``probe``
  examples (the quantity the QHM paper tracks)."""
  grads = jax.grad(loss_fn)(params, *probe)
  return (accuracy(params, opt_state, test, apply_fn=apply_fn, igt=igt),
          optax.tree.norm(grads))


def _fsdp_sharding(mesh, shape) -> NamedSharding:
  """Shards the first axis of ``shape`` that the mesh size divides."""
  n = mesh.shape["data"]
  for axis, size in enumerate(shape):
    if size % n == 0:
      return NamedSharding(mesh, PartitionSpec(*[None] * axis, "data"))
  return NamedSharding(mesh, PartitionSpec())


def training_examples(config: Config) -> int:
  """How many examples ``config`` trains on (validation held out)."""
  return len(load_data(config)[0].y_train)


def load_data(config: Config):
  """``(dataset, validation)``: the configured data set (its training part
  cut to ``train_subset``), and the last ``config.validation`` training
  examples as an ``(x, y)`` pair held out of training (``None`` if 0), or
  the data set's own validation split where it has one."""
  dataset = data_lib.load(config.dataset, config.data_dir, config.num_samples)
  if config.train_subset is not None:
    k = config.train_subset
    dataset = dataset._replace(x_train=dataset.x_train[:k],
                               y_train=dataset.y_train[:k])
  if dataset.x_validation is not None:
    if config.validation:
      raise ValueError(f"{config.dataset} has its own validation split; "
                       "leave validation at 0")
    return dataset, (jnp.asarray(dataset.x_validation),
                     jnp.asarray(dataset.y_validation))
  k = config.validation
  if k == 0:
    return dataset, None
  if not 0 < k < len(dataset.y_train):
    raise ValueError(f"validation={k} must be in [0, {len(dataset.y_train)})")
  held_out = (jnp.asarray(dataset.x_train[-k:]),
              jnp.asarray(dataset.y_train[-k:]))
  return dataset._replace(x_train=dataset.x_train[:-k],
                          y_train=dataset.y_train[:-k]), held_out


def train_and_evaluate(config: Config, workdir: str | Path | None = None,
                       progress: bool = False) -> dict:
  """Trains ``config.model`` with ``config.method``; returns the metrics.

  The result holds ``test_accuracy`` (a fraction), ``seconds`` and the
  per-epoch ``history``; with a ``workdir`` it is also written there as
  ``metrics.json`` and ``metrics.csv`` with a ``curves.png`` plot. The
  trained params are under ``params``. ``config.parallel="pmap"`` trains
  data parallel over all local devices (gradients ``pmean``-ed before the
  optimizer); ``"mesh"`` does the same with ``jit`` over a ``'data'`` device
  mesh (``NamedSharding``), where GSPMD inserts the all-reduce; ``"sharded"``
  also splits every param and optimizer-state leaf across the mesh (its
  first axis the device count divides), so each device stores a slice and
  GSPMD turns the optimizer's norms into cross-device reductions.
  """
  dataset, validation = load_data(config)
  plan = make_plan(config, len(dataset.y_train))
  steps = plan.steps
  model = models.make(config.model, dataset.x_train.shape[1:],
                      dataset.num_classes, config.seed)
  graphdef, params = nnx.split(model)
  tx = make_optimizer(config, plan, model=model)
  needs_norms = config.method == "clars"
  is_igt = config.method == "nigt"

  # CLARS norms from probes (one backward pass) where the model has probed
  # layers; otherwise the exact vmap-of-grad path.
  probed = getattr(model, "supports_probes", False)

  loss_fn, apply_fn = _model_fns(graphdef)

  x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  x_test, y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
  batch = plan.pass_batch

  pmap = config.parallel == "pmap"
  devices = jax.local_device_count() if pmap else 1
  batch_sharding = None
  place = None
  if config.parallel in ("mesh", "sharded"):
    # jit over a 'data' mesh: the batch is split across devices, params are
    # replicated, and GSPMD inserts the gradient all-reduce itself.
    mesh = jax.make_mesh((jax.local_device_count(),), ("data",),
                         axis_types=(AxisType.Auto,))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(tree):  # where params and optimizer state live on the mesh
      if config.parallel == "mesh":
        return jax.tree.map(lambda _: replicated, tree)
      return jax.tree.map(lambda x: _fsdp_sharding(mesh, jnp.shape(x)), tree)

  step_fn = functools.partial(
      train_step, tx=tx, loss_fn=loss_fn, clars_norms=needs_norms,
      noise_scale=config.noise_scale or config.measured_growth, probed=probed,
      axis_name="data" if pmap else None)

  def epoch_body(params, opt_state, order):  # order: (steps, local batch)
    def step(carry, idx):
      xb, yb = x_train[idx], y_train[idx]
      if batch_sharding is not None:
        xb, yb = jax.lax.with_sharding_constraint((xb, yb), batch_sharding)
      params, opt_state, loss = step_fn(*carry, (xb, yb))
      return (params, opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
    if place is not None:
      params, opt_state = jax.lax.with_sharding_constraint(
          (params, opt_state), place((params, opt_state)))
    return params, opt_state, jnp.mean(losses)

  body = (jax.pmap(epoch_body, axis_name="data") if pmap
          else jax.jit(epoch_body))

  def run_epoch(params, opt_state, key):
    order = jax.random.permutation(key, len(y_train))[:steps * batch]
    order = order.reshape(steps, devices, batch // devices)
    if not pmap:
      return body(params, opt_state, order[:, 0])
    return body(params, opt_state, order.transpose(1, 0, 2))

  evaluate = jax.jit(functools.partial(
      eval_step, apply_fn=apply_fn,
      loss_fn=loss_fn, test=(x_test, y_test),
      probe=(x_train[:4096], y_train[:4096]), igt=is_igt))

  opt_state = tx.init(params)
  key = jax.random.PRNGKey(config.seed)
  history: list[dict] = []
  manager = None
  if workdir is not None:
    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(
        Path(workdir).absolute() / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=2))
    if config.resume and manager.latest_step() is not None:
      restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
          state=ocp.args.StandardRestore((params, opt_state, key)),
          history=ocp.args.JsonRestore()))
      params, opt_state, key = restored.state
      history = list(restored.history)
  elif config.resume:
    raise ValueError("resume needs a workdir holding checkpoints")
  if pmap:
    params, opt_state = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (devices, *jnp.shape(x))),
        (params, opt_state))
  if place is not None:
    params, opt_state = jax.device_put((params, opt_state),
                                       place((params, opt_state)))
  start = time.perf_counter()
  last = config.epochs if config.stop_after is None else min(
      config.stop_after, config.epochs)
  epochs = range(len(history), last)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(epochs, desc=f"{config.method} b={batch}", leave=False)
    epochs = bar
  for epoch in epochs:
    key, sub = jax.random.split(key)
    params, opt_state, loss = run_epoch(params, opt_state, sub)
    if pmap:
      loss = loss[0]
    test_accuracy, grad_norm = map(float, evaluate(
        *_first_replica(pmap, (params, opt_state))))
    history.append({"epoch": epoch + 1, "train_loss": float(loss),
                    "test_accuracy": test_accuracy, "grad_norm": grad_norm,
                    "telemetry": telemetry_record(
                        _first_replica(pmap, opt_state))}
                   | growth_record(_first_replica(pmap, opt_state), config,
                                   plan))
    if bar is not None:
      bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{test_accuracy:.4f}")
    if manager is not None:
      manager.save(epoch + 1, args=ocp.args.Composite(
          state=ocp.args.StandardSave(
              (*_first_replica(pmap, (params, opt_state)), key)),
          history=ocp.args.JsonSave(history)))
  if manager is not None:
    manager.wait_until_finished()
  seconds = time.perf_counter() - start
  params, opt_state = _first_replica(pmap, (params, opt_state))
  if is_igt:
    params = normopt.igt_true_params(params, opt_state)
  result = {**dataclasses.asdict(config),
            "test_accuracy": history[-1]["test_accuracy"],
            "final_train_loss": history[-1]["train_loss"],
            "seconds": seconds, "passes_per_epoch": steps,
            "history": history}
  if validation is not None:
    result["validation_accuracy"] = float(jax.jit(functools.partial(
        accuracy, apply_fn=apply_fn))(params, None, validation))
  _count_divergence_as_chance(result)
  if workdir is not None:
    report.write_metrics(result, Path(workdir))
  result["params"] = params  # the trained (true, for NIGT) params; not saved
  return result


# training examples in the fixed batch on which train_population's checkpoints
# estimate the gradient noise scale
NOISE_PROBE = 1024


def _model_fns(graphdef):
  """``(loss_fn, apply_fn)`` of the model ``graphdef`` over its params:
  mean cross-entropy (with CLARS norm probes when given) and the logits."""
  def loss_fn(params, x, y, probes=None):
    model = nnx.merge(graphdef, params)
    logits = model(x, probes) if probes is not None else model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def apply_fn(params, x):
    return nnx.merge(graphdef, params)(x)

  return loss_fn, apply_fn


def _count_divergence_as_chance(result: dict) -> None:
  """A run whose training loss went non-finite scores at most chance (0.1):
  its argmax over NaN logits would otherwise pick a class by accident."""
  if not np.isfinite(result["final_train_loss"]):
    for key in ("test_accuracy", "validation_accuracy"):
      if key in result:
        result[key] = min(result[key], 0.1)


def train_population(config: Config, learning_rates, seeds,
                     progress: bool = False, *,
                     eval_at: Sequence[int] | None = None,
                     until: Callable[[np.ndarray, dict], bool] | None = None,
                     metric_fn: Callable[[np.ndarray, np.ndarray], dict]
                     | None = None, start=None,
                     on_epoch: Callable[[int, object, object], None]
                     | None = None) -> list[dict]:
  """Trains one copy of ``config`` per (learning rate, seed) pair at once.

  Every copy has its own initialization and data order (from its seed) and
  its own optimizer, whose schedule peaks at its learning rate; they run
  together as one compiled program, ``jax.vmap``-ed over the copies (one
  compile for a whole grid, and the small per-copy matmuls batched). Copies
  that share a seed see the same data order. Single device; a growing
  batch (``micro_batch``) works as in :func:`train_and_evaluate`.

  With ``eval_at`` (passes, counted from 1: optimizer steps with a fixed
  batch, micro-batches when accumulating), every copy also records at each
  of those passes its validation and test accuracy, its optimizer steps so
  far (``optimizer_step``) and the two gradient-noise-scale estimators
  (:func:`normopt.gradient_noise_scale`, ``trace`` and ``grad_sq``) on a
  fixed batch of ``NOISE_PROBE`` training examples, in
  ``record["checkpoints"]``. The check runs inside the compiled epoch
  behind a ``lax.cond`` on the pass number, so the passes in between pay
  nothing. ``until(passes, values)`` is asked after every epoch with the
  checkpoint passes so far and their values (name -> ``(copies,
  checkpoints)`` array) and stops the training when it says so. With
  ``config.measured_growth`` every pass measures the noise scale for
  :func:`normopt.batch_growth`.

  Every record holds the final accuracy and mean cross-entropy
  (``*_loss``) on the test and validation examples; the history holds the
  training loss and the validation loss of every epoch.
  ``metric_fn(logits, labels)`` (a dict of numbers, computed on the host,
  e.g. scikit-learn's AUC) adds its keys, prefixed ``validation_`` and
  ``test_``, from each copy's final logits.

  ``start``, a ``(params, opt_state)`` pair stacked over the copies (as
  ``on_epoch`` receives it, possibly from another batch size: the
  optimizer's state must have the same structure), replaces the fresh
  initialization: the copies branch from there. ``on_epoch(e, params,
  opt_state)`` is called with the stacked state after ``e`` epochs, from
  ``e = 0`` (before training) on.

  Returns:
    One record per copy (learning rates outer, seeds inner), like
    :func:`train_and_evaluate`'s result without params, telemetry and
    per-epoch test accuracy.
  """
  if config.parallel != "none" or config.noise_scale:
    raise ValueError("train_population trains on one device without "
                     "noise-scale tracking (measured_growth works)")
  dataset, validation = load_data(config)
  if eval_at is not None and validation is None:
    raise ValueError("eval_at needs validation examples")
  plan = make_plan(config, len(dataset.y_train))
  members = [(float(lr), int(seed)) for lr in learning_rates for seed in seeds]
  if not members:
    raise ValueError("need at least one learning rate and one seed")
  if min(lr for lr, _ in members) <= 0:
    raise ValueError(f"learning rates must be > 0, got {list(learning_rates)}")
  shapes = (dataset.x_train.shape[1:], dataset.num_classes)
  template = models.make(config.model, *shapes, 0)
  graphdef, _ = nnx.split(template)
  probed = getattr(template, "supports_probes", False)
  peaks = jnp.asarray([lr for lr, _ in members], jnp.float32)
  keys = jnp.stack([jax.random.PRNGKey(seed) for _, seed in members])

  loss_fn, apply_fn = _model_fns(graphdef)

  x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  test = (jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test))
  steps, batch = plan.steps, plan.pass_batch
  is_igt = config.method == "nigt"

  held_out = {"test": test} | (
      {} if validation is None else {"validation": validation})

  def evaluate(params, opt_state, logits=False):
    return {f"{split}_{name}": value
            for split, examples in held_out.items()
            for name, value in scores(params, opt_state, examples,
                                      apply_fn=apply_fn, igt=is_igt,
                                      logits=logits).items()}

  probe = (x_train[:NOISE_PROBE], y_train[:NOISE_PROBE])

  def checkpoint(params, opt_state, passes):
    _, _, estimate = normopt.gradient_noise_scale(
        lambda p, b, *pr: loss_fn(p, *b, *pr), params, probe, probed=probed)
    return {k: v for k, v in evaluate(params, opt_state).items()
            if k.endswith("accuracy")} | {
        "trace": estimate.trace, "grad_sq": estimate.grad_sq,
        "optimizer_step": optimizer_steps(opt_state, passes).astype(
            jnp.float32)}

  checkpoint_steps = jnp.asarray(sorted(eval_at or [0]), jnp.int32)

  def epoch(params, opt_state, key, peak, first_step):
    step_fn = functools.partial(
        train_step, tx=make_optimizer(config, plan, peak, template),
        loss_fn=loss_fn,
        clars_norms=config.method == "clars",
        noise_scale=config.measured_growth, probed=probed)
    order = jax.random.permutation(key, len(y_train))[:steps * batch]

    def step(carry, xs):
      i, idx = xs
      params, opt_state, loss = step_fn(*carry, (x_train[idx], y_train[idx]))
      if eval_at is None:
        return (params, opt_state), (loss, {})
      # the predicate depends on the step number only, so under vmap it
      # stays a branch (the copies' checkpoints coincide)
      passes = first_step + i + 1
      values = jax.lax.cond(
          jnp.isin(passes, checkpoint_steps), checkpoint,
          lambda *a: jax.tree.map(jnp.zeros_like, jax.eval_shape(
              checkpoint, *a)), params, opt_state, passes)
      return (params, opt_state), (loss, values)

    (params, opt_state), (losses, values) = jax.lax.scan(
        step, (params, opt_state), (jnp.arange(steps), order.reshape(
            steps, batch)))
    if validation is not None:  # in the same program: no extra compile
      values = values | {"epoch_validation_loss": scores(
          params, opt_state, validation, apply_fn=apply_fn,
          igt=is_igt)["loss"]}
    return params, opt_state, jnp.mean(losses), values

  run_epoch = jax.jit(jax.vmap(epoch, in_axes=(0, 0, 0, 0, None)))
  if start is None:
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[
        nnx.split(models.make(config.model, *shapes, seed))[1]
        for _, seed in members])
    opt_state = jax.jit(jax.vmap(
        lambda p, peak: make_optimizer(config, plan, peak, template).init(p)
    ))(params, peaks)
  else:  # branch from a given state: no fresh initialization to discard
    sizes = {jnp.shape(x)[:1] for x in jax.tree.leaves(start)}
    if sizes != {(len(members),)}:
      raise ValueError(f"start must stack {len(members)} copies (learning "
                       f"rates x seeds) on every leaf's first axis, got "
                       f"{sorted(sizes)}")
    params, opt_state = jax.tree.map(jnp.asarray, start)
  if on_epoch is not None:
    on_epoch(0, params, opt_state)
  began = time.perf_counter()
  losses, validation_losses = [], []
  checkpoints: dict[str, list[np.ndarray]] = {}
  reached: list[int] = []
  epochs = range(config.epochs)
  if progress:
    from tqdm import tqdm
    epochs = tqdm(epochs, desc=f"{config.method} b={batch} x{len(members)}",
                  leave=False)
  for e in epochs:
    keys, subkeys = jnp.unstack(jax.vmap(jax.random.split)(keys), axis=1)
    params, opt_state, loss, values = run_epoch(params, opt_state, subkeys,
                                                peaks, e * steps)
    losses.append(np.asarray(loss))
    if on_epoch is not None:
      on_epoch(e + 1, params, opt_state)
    if validation is not None:
      validation_losses.append(np.asarray(values.pop("epoch_validation_loss")))
    if eval_at is None:
      continue
    here = [s for s in sorted(eval_at) if e * steps < s <= (e + 1) * steps]
    reached += here
    for name, value in jax.device_get(values).items():
      checkpoints.setdefault(name, []).append(
          value[:, [s - e * steps - 1 for s in here]])
    if until is not None and until(np.asarray(reached), {
        k: np.concatenate(v, axis=1) for k, v in checkpoints.items()}):
      break
  final = jax.device_get(jax.jit(jax.vmap(functools.partial(
      evaluate, logits=metric_fn is not None)))(params, opt_state))
  taken = np.asarray(optimizer_steps(opt_state, len(losses) * steps)
                     ) * np.ones(len(members), int)
  seconds = time.perf_counter() - began
  checkpoints = {k: np.concatenate(v, axis=1) for k, v in checkpoints.items()}
  records = []
  for i, (lr, seed) in enumerate(members):
    record = {**dataclasses.asdict(config), "learning_rate": lr, "seed": seed,
              **{name: float(value[i]) for name, value in final.items()
                 if not name.endswith("logits")},
              "final_train_loss": float(losses[-1][i]),
              "seconds": seconds / len(members), "passes_per_epoch": steps,
              "epochs_trained": len(losses),
              "optimizer_steps": int(taken[i]),
              "history": [{"epoch": e + 1, "train_loss": float(loss[i])}
                          | ({} if validation is None else
                             {"validation_loss": float(
                                 validation_losses[e][i])})
                          for e, loss in enumerate(losses)]}
    if metric_fn is not None:
      for split, (_, labels) in held_out.items():
        record.update({f"{split}_{k}": float(v) for k, v in metric_fn(
            final[f"{split}_logits"][i], np.asarray(labels)).items()})
    if config.measured_growth:
      record["final_batch"] = int(opt_state.accumulation[i]) * (
          config.micro_batch)
    if eval_at is not None:
      record["checkpoints"] = [
          {"step": int(s), **{k: float(v[i, j]) for k, v in checkpoints.items()}}
          for j, s in enumerate(reached)]
    _count_divergence_as_chance(record)
    records.append(record)
  return records


def optimizer_steps(opt_state, passes):
  """Optimizer steps taken: ``passes`` with a fixed batch, else the count
  of the accumulating wrapper (``optax.MultiSteps``, ``batch_growth``)."""
  if isinstance(opt_state, normopt.BatchGrowthState):
    opt_state = opt_state.multi_steps
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state.gradient_step
  return passes


def growth_record(opt_state, config: Config, plan: Plan) -> dict:
  """With measured growth: the batch now, the optimizer steps so far and
  the tracked noise scale; with Seesaw, the batch and the steps (for
  metrics.json)."""
  if config.batch_schedule == "seesaw":
    steps = int(opt_state.gradient_step)
    return {"batch_size": int(seesaw(config, plan).micro_batches(steps))
            * config.micro_batch, "optimizer_steps": steps}
  if not config.measured_growth:
    return {}
  return {"batch_size": int(opt_state.accumulation) * config.micro_batch,
          "optimizer_steps": int(opt_state.multi_steps.gradient_step),
          "noise_scale": float(opt_state.trace / opt_state.grad_sq)}


def telemetry_record(opt_state) -> dict[str, float]:
  """``normopt.telemetry`` of the optimizer state as a flat dict of floats,
  keyed ``"<link>/<quantity><layer path>"`` (for metrics.json)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(normopt.telemetry(opt_state))
  return {"/".join(str(getattr(k, "key", k)) for k in path[:2])
          + jax.tree_util.keystr(path[2:]).removesuffix(".value"): float(value)
          for path, value in flat}


def _first_replica(pmap: bool, tree):
  return jax.tree.map(lambda x: x[0], tree) if pmap else tree
