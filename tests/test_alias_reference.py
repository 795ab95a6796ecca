"""Every method against a float64 NumPy implementation of its paper's
pseudo-code, on a stochastic least-squares problem (100 steps, x64)."""

import jax
import optax
import pytest

import normopt
from tests import reference, trees
from tests.problems import LeastSquares

STEPS = 100
RTOL = 1e-6


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def run(tx, problem, steps=STEPS, extra=None):
  params = problem.params()
  state = tx.init(params)

  @jax.jit
  def step(params, state, g, kwargs):
    u, state = tx.update(g, state, params, **kwargs)
    return optax.apply_updates(params, u), state

  for t in range(steps):
    g = problem.jax_grad(params, t)
    params, state = step(params, state, g, extra(params, t) if extra else {})
  return params, state


def check(params, expected):
  trees.assert_tree_matches(params, expected, rtol=RTOL, atol=1e-12)


def test_sngm():
  p = LeastSquares()
  got, _ = run(normopt.sngm(0.05, beta=0.9, weight_decay=1e-3), p)
  check(got, reference.sngm(p.grad, p.w0, STEPS, 0.05, 0.9, 1e-3))


def test_sngd_is_sngm_with_zero_beta():
  p = LeastSquares()
  a, _ = run(normopt.sngd(0.05), p)
  b, _ = run(normopt.sngm(0.05, beta=0.0), p)
  check(a, trees.blocks(b))
  check(a, reference.sngm(p.grad, p.w0, STEPS, 0.05, 0.0))


def test_block_sngm():
  p = LeastSquares()
  got, _ = run(normopt.block_sngm(0.02, beta=0.8, weight_decay=1e-3), p)
  check(got, reference.block_sngm(p.grad, p.w0, STEPS, 0.02, 0.8, 1e-3))


@pytest.mark.parametrize("mask", [True, None])
@pytest.mark.parametrize("nesterov", [False, True])
def test_lars(nesterov, mask):
  p = LeastSquares()
  got, _ = run(normopt.lars(2.0, momentum=0.9, weight_decay=1e-3,
                            trust_coefficient=0.01, nesterov=nesterov,
                            mask=mask), p)
  check(got, reference.lars(p.grad, p.w0, STEPS, 2.0, 0.9, 1e-3, 0.01,
                            selected=[mask is True, True], nesterov=nesterov))


def test_lars_and_clars_trust_ratio_every_leaf_by_default():
  p = LeastSquares()
  default, _ = run(normopt.lars(2.0, trust_coefficient=0.01), p, steps=5)
  every, _ = run(normopt.lars(2.0, trust_coefficient=0.01, mask=True), p,
                 steps=5)
  check(default, trees.blocks(every))


def test_lars_equals_optax_lars_where_defined_alike():
  p = LeastSquares()
  ours, _ = run(normopt.lars(2.0, momentum=0.9, trust_coefficient=0.01, mask=True), p)
  theirs, _ = run(optax.lars(2.0, trust_coefficient=0.01, momentum=0.9), p)
  check(ours, trees.blocks(theirs))


@pytest.mark.parametrize("mask", [None, True])
def test_lamb(mask):
  p = LeastSquares()
  got, _ = run(normopt.lamb(0.01, b1=0.8, b2=0.99, eps=1e-6,
                            weight_decay=1e-2, mask=mask), p)
  check(got, reference.lamb(p.grad, p.w0, STEPS, 0.01, 0.8, 0.99, 1e-6, 1e-2,
                            selected=[mask is True, True]))


def test_lamb_equals_optax_lamb_with_every_leaf_masked_in():
  """20 steps, weight decay included (float64, rtol 1e-6)."""
  p = LeastSquares()
  ours, _ = run(normopt.lamb(0.01, b1=0.9, b2=0.999, eps=1e-6,
                             weight_decay=1e-2, mask=True), p, steps=20)
  theirs, _ = run(optax.lamb(0.01, 0.9, 0.999, 1e-6, weight_decay=1e-2), p,
                  steps=20)
  check(ours, trees.blocks(theirs))


@pytest.mark.parametrize("mask", [True, None])
def test_clars(mask):
  p = LeastSquares()
  got, _ = run(normopt.clars(1.0, momentum=0.9, trust_coefficient=0.01,
                             mask=mask), p,
               extra=lambda params, t: {
                   "per_example_norms": p.jax_example_norms(params, t)})
  check(got, reference.clars(p.grad, p.example_grads, p.w0, STEPS, 1.0, 0.9,
                             0.01, selected=[mask is True, True]))


def test_normalized_sgdm():
  p = LeastSquares()
  got, _ = run(normopt.normalized_sgdm(0.03, beta=0.9), p)
  check(got, reference.normalized_sgdm(p.grad, p.w0, STEPS, 0.03, 0.9))


def test_nigt_and_true_iterate():
  p = LeastSquares()
  x, state = run(normopt.nigt(0.03, beta=0.9), p)
  w_ref, x_ref = reference.nigt(p.grad, p.w0, STEPS, 0.03, 0.9)
  check(x, x_ref)
  check(normopt.igt_true_params(x, state), w_ref)


def test_nigt_first_momentum_is_first_gradient():
  p = LeastSquares()
  x, state = run(normopt.nigt(0.03, beta=0.9), p, steps=1)
  g = p.grad(p.w0, 0)
  w_ref = [w - 0.03 * gi for w, gi in zip(p.w0, reference.normalize(g))]
  check(normopt.igt_true_params(x, state), w_ref)


def test_adaptive_nigt():
  p = LeastSquares()
  x, state = run(normopt.adaptive_nigt(gradient_bound=5.0), p,
                 extra=lambda params, t: {
                     "second_grads": p.jax_grad(params, t, other=True)})
  w_ref, x_ref = reference.adaptive_nigt(p.grad, p.grad2, p.w0, STEPS, 5.0)
  check(x, x_ref)
  check(normopt.igt_true_params(x, state), w_ref)


def test_qhm_with_epoch_like_schedules():
  p = LeastSquares()
  def lr(k):
    return 0.1 / (1 + k // 25)
  def beta(k):
    return 0.9 * 0.5 ** (k // 30)
  got, _ = run(normopt.qhm(lr, beta=beta, nu=0.7, weight_decay=1e-3), p)
  check(got, reference.qhm(p.grad, p.w0, STEPS, lr, beta, 0.7, 1e-3))


def test_qhm_reductions():
  p = LeastSquares()
  a, b = 0.1, 0.9
  sgd, _ = run(optax.sgd(a), p)
  check(run(normopt.qhm(a, beta=b, nu=0.0), p)[0], trees.blocks(sgd))
  # ν = β: Nesterov SGD with learning rate α (1 - β) (d = (1 - β) · trace).
  nest, _ = run(optax.sgd(a * (1 - b), momentum=b, nesterov=True), p)
  check(run(normopt.snag(a, beta=b), p)[0], trees.blocks(nest))
  # ν = 1: heavy ball damped by (1 - β), i.e. SGD momentum at lr α (1 - β).
  hb, _ = run(optax.sgd(a * (1 - b), momentum=b), p)
  check(run(normopt.nshb(a, beta=b), p)[0], trees.blocks(hb))
  check(run(normopt.nshb(a, beta=b), p)[0],
        reference.qhm(p.grad, p.w0, STEPS, a, b, 1.0))
