"""MAML++'s training options (Antoniou et al. 2019) and Meta-SGD's per-element
rates, each against a hand-written form: the multi-step loss, derivative-order
annealing, per-step batch-norm scale and shift, and per-element inner rates.

float64, random (SYNTHETIC) images, the one-block network of test_maml.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml_jax import maml, train_step as ts
from maml_jax.config import ConfigError
from test_maml import BASE, _hand_sgd, _query_loss, assert_trees_close, ce, loss_and_grad, rel_diff, setup


# ------------------------------------------------------------ multi-step loss

def test_msl_weights_follow_the_maml_plus_plus_schedule():
  cfg = BASE.replace(multi_step_loss=True, msl_epochs=10)
  np.testing.assert_allclose(maml.msl_weights(cfg, 3, 0), [1 / 3] * 3, rtol=1e-6)
  # t=4 of N=10, S=3: non-final 1/3 - 4/30 = 0.2, last 1/3 + 4*2/30 = 0.6.
  np.testing.assert_allclose(maml.msl_weights(cfg, 3, 4), [0.2, 0.2, 0.6], rtol=1e-6)
  # t=9: 1/3 - 9/30 = 1/30 (above the floor 0.03/3, which binds only at t=N).
  np.testing.assert_allclose(maml.msl_weights(cfg, 3, 9), [1 / 30, 1 / 30, 28 / 30], rtol=1e-5)
  # From meta-batch N on: the last step alone.
  np.testing.assert_array_equal(maml.msl_weights(cfg, 3, 10), [0, 0, 1])


def test_multi_step_loss_is_the_weighted_sum_of_per_step_query_losses(x64):
  cfg = BASE.replace(multi_step_loss=True, msl_epochs=10)   # 2 inner steps
  model, meta, batch = setup(cfg)

  def hand(params, b, w):
    def task(sx, sy, qx, qy):
      one = _hand_sgd(model, params, sx, sy, cfg.inner_lr, 1)
      two = _hand_sgd(model, one, sx, sy, cfg.inner_lr, 1)
      return w[0] * _query_loss(model, one, qx, qy) + w[1] * _query_loss(model, two, qx, qy)
    return jax.vmap(task)(*b).mean()

  f = jax.jit(jax.value_and_grad(lambda m, b, t: maml.meta_loss(m, b, model=model, cfg=cfg, meta_step=t)[0]))
  hand_vg = jax.jit(jax.value_and_grad(hand))
  # t=3 of N=10, S=2: weights 0.5 -+ 3/20 (hand-computed).
  loss, grad = f(meta, batch, 3)
  want, want_grad = hand_vg(meta["model"], batch, jnp.array([0.35, 0.65]))
  np.testing.assert_allclose(loss, want, rtol=1e-12)
  assert_trees_close(grad["model"], want_grad, rtol=1e-10)
  # After the annealing: plain MAML's loss (the last step's query loss).
  np.testing.assert_allclose(f(meta, batch, 10)[0], loss_and_grad(BASE)(meta, batch)[0], rtol=1e-12)
  assert abs(float(loss) - float(f(meta, batch, 10)[0])) > 1e-6   # the weights matter


# ----------------------------------------------------- derivative-order annealing

def test_derivative_order_annealing_switches_from_first_to_second_order(x64):
  cfg = BASE.replace(first_order_until=5)
  model, meta, batch = setup(cfg)
  mesh = ts.make_mesh(cfg.tasks, jax.devices("cpu")[:1])
  grad_fn = jax.jit(ts._sharded_grad(model, cfg, mesh))
  first = loss_and_grad(BASE.replace(first_order=True))(meta, batch)[1]   # pinned by test_maml's hand forms
  second = loss_and_grad(BASE)(meta, batch)[1]
  assert rel_diff(first, second) > 1e-2
  for t in (0, 4):
    assert_trees_close(grad_fn(meta, batch, jnp.int32(t))[2], first, rtol=1e-10)
  for t in (5, 100):
    assert_trees_close(grad_fn(meta, batch, jnp.int32(t))[2], second, rtol=1e-10)
  assert grad_fn._cache_size() == 1   # one compiled step on both sides of the switch


# -------------------------------------------------- per-step batch-norm scale/shift

def test_per_step_bn_parameters_have_a_leading_step_axis(x64):
  plain = setup(BASE)[1]["model"]
  stepped = setup(BASE.replace(per_step_bn=True))[1]["model"]
  names = maml.path_names(plain)
  for n, a, b in zip(jax.tree.leaves(names), jax.tree.leaves(plain), jax.tree.leaves(stepped)):
    assert b.shape == ((BASE.inner_steps,) + a.shape if maml.is_bn(n) else a.shape), n
  assert any(maml.is_bn(n) for n in jax.tree.leaves(names))


def test_per_step_bn_step_k_uses_slice_k_only(x64):
  cfg = BASE.replace(per_step_bn=True)
  model, meta, batch = setup(cfg)
  x, y = batch.support_x[0], batch.support_y[0]
  names = maml.path_names(meta["model"])

  def loss_at(p, k):
    return ce(model.apply({"params": maml.params_at_step(p, cfg, k)}, x), y)

  for k in range(cfg.inner_steps):
    g = jax.grad(loss_at)(meta["model"], k)
    for n, gw in zip(jax.tree.leaves(names), jax.tree.leaves(g)):
      if maml.is_bn(n):
        assert np.abs(gw[k]).max() > 0, n
        others = np.delete(np.asarray(gw), k, axis=0)
        np.testing.assert_array_equal(others, 0)

  # Through the inner loop: step 0's support loss ignores slice 1; step 1's reads it.
  def perturb(k):
    return jax.tree.map(lambda w, n: w.at[k].add(0.3) if maml.is_bn(n) else w, meta["model"], names)

  adapt = jax.jit(functools.partial(maml.adapt, model=model, cfg=cfg, steps=2))
  base = adapt(meta, x, y)[1]
  moved = adapt(dict(meta, model=perturb(1)), x, y)[1]
  assert moved[0] == base[0] and abs(float(moved[1] - base[1])) > 1e-6


def test_per_step_bn_with_equal_slices_is_shared_bn(x64):
  """With the scale and shift fixed in the inner loop (`adapt_bn=False`, MAML++'s
  default), identical slices give plain MAML's loss, and the shared parameters'
  meta-gradient is the sum of the per-step ones.  (With `adapt_bn`, step k's
  update moves slice k only, so step k+1 does not see it: the losses differ.)"""
  shared = BASE.replace(adapt_bn=False)
  cfg = shared.replace(per_step_bn=True)
  model, meta, batch = setup(shared)
  names = maml.path_names(meta["model"])
  stacked = dict(meta, model=jax.tree.map(
      lambda w, n: jnp.broadcast_to(w, (cfg.inner_steps,) + w.shape) if maml.is_bn(n) else w,
      meta["model"], names))
  loss, grad = loss_and_grad(shared)(meta, batch)
  loss_ps, grad_ps = loss_and_grad(cfg)(stacked, batch)
  np.testing.assert_allclose(loss_ps, loss, rtol=1e-12)
  summed = jax.tree.map(lambda g, n: g.sum(0) if maml.is_bn(n) else g, grad_ps["model"], names)
  assert_trees_close(summed, grad["model"], rtol=1e-10)


# ------------------------------------------------------ per-element rates (Meta-SGD)

def test_per_element_rates_are_elementwise_sgd(x64):
  cfg = BASE.replace(inner_lr_per_element=True)
  model, meta, batch = setup(cfg)
  rng = np.random.default_rng(3)
  for p, lr in zip(jax.tree.leaves(meta["model"]), jax.tree.leaves(meta["lr"])):
    assert lr.shape == (1,) + p.shape
  meta = dict(meta, lr=jax.tree.map(lambda lr: jnp.asarray(rng.uniform(0.05, 0.5, lr.shape)), meta["lr"]))
  x, y = batch.support_x[0], batch.support_y[0]
  got = jax.jit(functools.partial(maml.adapt, model=model, cfg=cfg, steps=2))(meta, x, y)[0]
  want = meta["model"]
  for _ in range(2):   # the same per-element rates at every step
    g = jax.grad(lambda p: ce(model.apply({"params": p}, x), y))(want)
    want = jax.tree.map(lambda w, gw, lr: w - lr[0] * gw, want, g, meta["lr"])
  assert_trees_close(got, want, rtol=1e-10)
  _, grad = loss_and_grad(cfg)(meta, batch)
  # The rates are meta-learned (all but the conv bias's, which batch norm cancels).
  names = jax.tree.leaves(maml.path_names(grad["lr"]))
  assert all(np.abs(g).max() > 0 for n, g in zip(names, jax.tree.leaves(grad["lr"])) if n != "block_0/conv/bias")


def test_per_element_and_per_layer_rates_exclude_each_other():
  with pytest.raises(ConfigError, match="exclude"):
    BASE.replace(learn_inner_lr=True, inner_lr_per_element=True).validate()


# ------------------------------------------------------------ all of it, one step

def test_train_step_runs_with_every_maml_plus_plus_option():
  from test_train_step import SHAPE, TINY, init_state
  from test_maml import OneBlock
  from maml_jax.data_sources import synthetic_classes
  from test_train_step import _sampler
  cfg = TINY.replace(inner_steps=2, multi_step_loss=True, msl_epochs=3, first_order_until=1, per_step_bn=True,
                     learn_inner_lr=True)
  mesh = ts.make_mesh(cfg.tasks, jax.devices("cpu")[:1])
  model = OneBlock(cfg.ways)
  state = ts.replicate(init_state(model, cfg, jax.random.key(0), SHAPE), mesh)
  sample = _sampler(synthetic_classes(12, 20, cfg.image_size, cfg.channels, seed=0), cfg, seed=0)
  step = ts.make_train_step(model, cfg, mesh)
  for i in range(3):   # first order, then second order; annealing weights
    state, metrics = step(state, ts.shard_batch(sample(i), mesh))
    assert bool(metrics["finite"])
  assert int(state.step) == 3 and step._cache_size() == 1
