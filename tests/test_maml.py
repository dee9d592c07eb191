"""Second-order MAML (`maml_jax.maml`) as pure functions: the meta-gradient
against finite differences, hand-written SGD and its first-order form, the
fast formulations against the reference, and the flags' promised effects.

Everything runs in float64 (the `x64` fixture) with random (SYNTHETIC)
images, so gradients can be compared tightly.  The properties of the algorithm
are checked on a one-block network (`OneBlock`: conv, batch norm, ReLU,
max-pool, linear head), because compiling a second-order meta-gradient takes
seconds per network layer on a CPU; the project's own networks are compared
formulation ("gemm") against reference ("xla").
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maml_jax import maml
from maml_jax.config import get_preset
from maml_jax.episodes import Episodes, episode_labels
from maml_jax.models import build_model, default_conv_impl
from maml_jax.models import layers
from maml_jax.models.layers import ConvBlock, MLPHead


class OneBlock(nn.Module):
  """The smallest network with every layer kind: 12x12 -> conv (stride 2) ->
  BN -> ReLU -> 2x2 max-pool -> 3x3x10 -> linear head.  With "gemm" on grey
  images the batch norm folds into the convolution (`layers.folds`: 9 <= 10)."""
  ways: int
  impl: str = "gemm"

  @nn.compact
  def __call__(self, x, stat_mask=None):
    x = ConvBlock(10, stride=2, pool=True, impl=self.impl, name="block_0")(x, stat_mask)
    return MLPHead((), self.ways, name="head")(x)


# Two inner steps (the scan and the per-step learning rates matter), an inner
# learning rate exact in float32 (the engine stores rates as float32), and
# explicit formulations so that the test does not depend on the backend.
# `model="one-block"` selects OneBlock (see `make_model`).
BASE = get_preset("tiny").replace(model="one-block", inner_steps=2, inner_lr=0.25, conv_impl="gemm",
                                  task_map="map")


def make_model(cfg):
  if cfg.model == "one-block":
    return OneBlock(cfg.ways, cfg.conv_impl)
  return build_model(cfg.model, cfg.ways, cfg.conv_impl, cfg.width)


def _f64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def random_batch(cfg, image_shape, seed=0) -> Episodes:
  """SYNTHETIC episodes: uniform random images with class-major labels."""
  rng = np.random.default_rng(seed)
  n, m = cfg.ways * cfg.shots, cfg.ways * cfg.queries
  return Episodes(jnp.asarray(rng.random((cfg.tasks, n) + image_shape)),
                  jnp.asarray(episode_labels(cfg.tasks, cfg.ways, cfg.shots)),
                  jnp.asarray(rng.random((cfg.tasks, m) + image_shape)),
                  jnp.asarray(episode_labels(cfg.tasks, cfg.ways, cfg.queries)))


def init_meta_params(cfg, image, seed):
  """Meta-parameters of the engine's structure (`maml.init_meta_params`, whose
  shapes are taken without running it) holding random float64 values: He-scaled
  kernels, and non-zero biases and batch-norm scales and shifts, so that every
  parameter's derivative is exercised.  Compiling flax's initialisers would
  cost seconds per network."""
  shape = (image, image, cfg.channels)
  # Traced in float32 mode: in float64 mode flax's default initialisers make
  # float64 conv kernels, which XLA's convolution refuses next to the float32
  # probe image that `init_meta_params` uses.
  with jax.enable_x64(False):
    abstract = jax.eval_shape(lambda k: maml.init_meta_params(make_model(cfg), cfg, k, shape),
                              jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return rng.normal(size=a.shape) * np.sqrt(2 / np.prod(a.shape[:-1]))
    if "scale" in name:
      return 1 + 0.2 * rng.normal(size=a.shape)
    return 0.2 * rng.normal(size=a.shape)

  meta = {"model": jax.tree_util.tree_map_with_path(draw, abstract["model"]),
          "lr": jax.tree.map(lambda a: np.full(a.shape, cfg.inner_lr), abstract["lr"])}
  return _f64(meta)


def setup(cfg, image=12, seed=0):
  """(model, float64 meta-parameters, float64 batch) for the configuration."""
  shape = (image, image, cfg.channels)
  return make_model(cfg), init_meta_params(cfg, image, seed), random_batch(cfg, shape, seed + 1)


@functools.lru_cache(maxsize=None)
def loss_and_grad(cfg, steps=None):
  """Jitted (meta_params, batch) -> (meta_loss, meta-gradient); cached so that
  tests sharing a configuration share one compilation."""
  model = make_model(cfg)
  f = lambda m, b: maml.meta_loss(m, b, model=model, cfg=cfg, steps=steps)[0]
  return jax.jit(jax.value_and_grad(f))


def loss_fn(cfg):
  """The meta-loss alone (through the cached loss-and-gradient compilation)."""
  return lambda m, b: loss_and_grad(cfg)(m, b)[0]


def ce(logits, labels):
  """Mean cross-entropy, written independently of `maml.cross_entropy`."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def assert_trees_close(got, want, rtol):
  """Leafwise |got - want| <= rtol * (|want| + max|want| over the whole tree)."""
  scale = np.abs(flat(want)).max()
  assert scale > 0
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale), got, want)


def rel_diff(a, b):
  a, b = flat(a), flat(b)
  return np.abs(a - b).max() / np.abs(b).max()


# ------------------------------------------------ fast formulations vs reference

@pytest.mark.slow
def test_tiny_network_meta_gradient_gemm_equals_xla(x64):
  """The whole second-order meta-gradient through the `tiny` preset's network
  (conv4's stride-2 blocks, the default CPU path), one task, one inner step."""
  cfg = BASE.replace(model="tiny", tasks=1, inner_steps=1, task_map="vmap")
  _, meta, batch = setup(cfg)
  loss_g, grad_g = loss_and_grad(cfg.replace(conv_impl="gemm"))(meta, batch)
  loss_x, grad_x = loss_and_grad(cfg.replace(conv_impl="xla"))(meta, batch)
  np.testing.assert_allclose(loss_g, loss_x, rtol=1e-12)
  assert_trees_close(grad_g, grad_x, rtol=1e-9)


@pytest.mark.parametrize("query_bn", ["batch", "support"])
def test_folded_block_meta_gradient_gemm_equals_xla(x64, query_bn):
  """The one-block network's second-order meta-gradient, two inner steps: the
  "gemm" block folds batch norm into the convolution (`layers.conv_bn_folded`)
  and pools before the ReLU; "xla" is conv, batch norm, ReLU, pool as written."""
  cfg = BASE.replace(query_bn=query_bn)
  assert layers.folds(3, cfg.channels, 10)
  _, meta, batch = setup(cfg)
  loss_g, grad_g = loss_and_grad(cfg)(meta, batch)
  loss_x, grad_x = loss_and_grad(cfg.replace(conv_impl="xla"))(meta, batch)
  np.testing.assert_allclose(loss_g, loss_x, rtol=1e-12)
  # The conv bias cancels in batch norm: its gradient is zero (exactly, when folded).
  np.testing.assert_array_equal(grad_g["model"]["block_0"]["conv"]["bias"], 0.)
  assert np.abs(grad_x["model"]["block_0"]["conv"]["bias"]).max() < 1e-12
  assert_trees_close(grad_g, grad_x, rtol=1e-9)


def test_unrolled_inner_loop_gives_the_same_meta_gradient(x64):
  """Meta-training unrolls the inner scan (`maml.inner_unroll`); the rolled scan
  must give the same meta-gradient."""
  assert maml.inner_unroll(BASE, BASE.inner_steps) == BASE.inner_steps > 1
  _, meta, batch = setup(BASE)
  loss, grad = loss_and_grad(BASE)(meta, batch)
  loss_r, grad_r = loss_and_grad(BASE.replace(inner_unroll=1))(meta, batch)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-12)
  assert_trees_close(grad_r, grad, rtol=1e-10)


def test_inner_unroll_rule():
  assert maml.inner_unroll(BASE, 5) == 5
  assert maml.inner_unroll(BASE, 9) == 1                 # compile time grows with unrolled steps
  assert maml.inner_unroll(BASE.replace(remat=True), 5) == 1
  assert maml.inner_unroll(BASE.replace(remat=True, inner_unroll=3), 5) == 3


SCRATCH7 = BASE.replace(model="scratch7", width=0.125, task_map="map")


def _scratch7_gradient(cfg):
  """Loss and gradient of scratch7 with zero inner steps, 16x16 images."""
  _, meta, batch = setup(cfg, image=16)
  return loss_and_grad(cfg, steps=0)(meta, batch)


def test_scratch7_gradient_gemm_equals_xla(x64):
  """scratch7 (stride-1 blocks, max-pools down to 1x1, FC head) at reduced
  width: loss and gradient with zero inner steps, which checks that the network
  wires the same layers either way.  (Its second-order graphs take 20-50 s to
  compile on a shared 2-core CPU; the second-order behaviour of the same layers
  is checked in test_layers.py, against finite differences above, and through
  the tiny network.)"""
  loss_g, grad_g = _scratch7_gradient(SCRATCH7.replace(conv_impl="gemm"))
  loss_x, grad_x = _scratch7_gradient(SCRATCH7.replace(conv_impl="xla"))
  np.testing.assert_allclose(loss_g, loss_x, rtol=1e-12)
  assert_trees_close(grad_g, grad_x, rtol=1e-9)


def test_scratch7_gradient_on_the_default_path_equals_the_reference(x64):
  """The backend's default formulation and task batching ("auto") against the
  reference (XLA's ops, `lax.map`)."""
  # "auto" resolved as the engine resolves it (one compilation per distinct setting).
  default = SCRATCH7.replace(conv_impl=default_conv_impl(), task_map=maml.default_task_map())
  loss, grad = _scratch7_gradient(default)
  loss_x, grad_x = _scratch7_gradient(SCRATCH7.replace(conv_impl="xla"))
  np.testing.assert_allclose(loss, loss_x, rtol=1e-12)
  assert_trees_close(grad, grad_x, rtol=1e-9)


def test_scratch7_gradient_gemm_vmap_equals_map(x64):
  """Four max-pools down to 1x1, tasks batched with `vmap`: a max-pool whose
  derivative re-tests `x == max(x)` came out 36-107% wrong here on XLA:CPU
  (jaxlib 0.10.2), so `layers.max_pool` selects each window's winner once."""
  _, grad_map = _scratch7_gradient(SCRATCH7.replace(conv_impl="gemm"))
  _, grad_vmap = _scratch7_gradient(SCRATCH7.replace(conv_impl="gemm", task_map="vmap"))
  assert_trees_close(grad_vmap, grad_map, rtol=1e-9)


def test_meta_gradient_vmap_equals_map(x64):
  _, meta, batch = setup(BASE)
  loss_m, grad_m = loss_and_grad(BASE)(meta, batch)
  loss_v, grad_v = loss_and_grad(BASE.replace(task_map="vmap"))(meta, batch)
  np.testing.assert_allclose(loss_v, loss_m, rtol=1e-12)
  assert_trees_close(grad_v, grad_m, rtol=1e-10)


def test_remat_gives_the_same_meta_gradient(x64):
  _, meta, batch = setup(BASE)
  loss, grad = loss_and_grad(BASE)(meta, batch)
  loss_r, grad_r = loss_and_grad(BASE.replace(remat=True))(meta, batch)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-12)
  assert_trees_close(grad_r, grad, rtol=1e-10)


# ------------------------------------------------------- the meta-gradient itself

def _directional_fd(f, params, direction, eps):
  plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
  minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
  return (float(f(plus)) - float(f(minus))) / (2 * eps)


def _random_direction(tree, seed, only=None):
  """A unit-norm random direction in parameter space (zero outside subtree `only`)."""
  rng = np.random.default_rng(seed)
  d = jax.tree.map(lambda p: rng.normal(size=p.shape), tree)
  if only is not None:
    d = {k: (v if k == only else jax.tree.map(np.zeros_like, v)) for k, v in d.items()}
  norm = np.linalg.norm(flat(d))
  return jax.tree.map(lambda x: jnp.asarray(x / norm), d)


def test_second_order_meta_gradient_matches_finite_differences(x64):
  _, meta, batch = setup(BASE)
  _, grad = loss_and_grad(BASE)(meta, batch)
  _, grad_fo = loss_and_grad(BASE.replace(first_order=True))(meta, batch)
  f = lambda m: loss_fn(BASE)(m, batch)
  for seed in range(3):
    d = _random_direction(meta, seed)
    fd = _directional_fd(f, meta, d, 1e-5)
    exact = float(flat(grad) @ flat(d))
    assert abs(exact - fd) <= 1e-7 * abs(fd) + 1e-10, (seed, exact, fd)
    # The first-order approximation is measurably off along the same direction,
    # so this check would catch a missing second-order term.
    assert abs(float(flat(grad_fo) @ flat(d)) - fd) > 1e3 * abs(exact - fd) + 1e-6


def test_learned_inner_lr_gradient_matches_finite_differences(x64):
  cfg = BASE.replace(learn_inner_lr=True)
  _, meta, batch = setup(cfg)
  assert jax.tree.leaves(meta["lr"])[0].shape == (cfg.inner_steps,)
  # Different rates per tensor and step, so every rate matters differently.
  rng = np.random.default_rng(3)
  meta["lr"] = jax.tree.map(lambda lr: lr * rng.uniform(0.5, 1.5, lr.shape), meta["lr"])
  _, grad = loss_and_grad(cfg)(meta, batch)
  assert np.abs(flat(grad["lr"])).max() > 1e-4
  f = lambda m: loss_fn(cfg)(m, batch)
  for seed in range(2):
    d = _random_direction(meta, seed, only="lr")
    fd = _directional_fd(f, meta, d, 1e-5)
    exact = float(flat(grad) @ flat(d))
    assert abs(exact - fd) <= 1e-7 * abs(fd) + 1e-10, (seed, exact, fd)


def test_learned_rates_beyond_the_trained_steps_reuse_the_last(x64):
  cfg = BASE.replace(learn_inner_lr=True)
  meta = init_meta_params(cfg, 12, 0)
  meta["lr"] = jax.tree.map(lambda lr: jnp.array([0.5, 0.125]), meta["lr"])
  for lr in jax.tree.leaves(maml.step_lrs(meta, cfg, 4)):
    np.testing.assert_array_equal(lr, [0.5, 0.125, 0.125, 0.125])
  for lr in jax.tree.leaves(maml.step_lrs(init_meta_params(BASE, 12, 0), BASE, 3)):   # fixed rate
    np.testing.assert_array_equal(lr, [BASE.inner_lr] * 3)


def _query_loss(model, params, qx, qy):
  return ce(model.apply({"params": params}, qx), qy)


def _hand_sgd(model, params, x, y, lr, steps):
  """`steps` textbook SGD steps on the support loss, all parameters, fixed lr."""
  for _ in range(steps):
    g = jax.grad(lambda p: ce(model.apply({"params": p}, x), y))(params)
    params = jax.tree.map(lambda w, gw: w - lr * gw, params, g)
  return params


def test_zero_inner_steps_is_the_plain_query_loss(x64):
  model, meta, batch = setup(BASE)

  @jax.jit
  @jax.value_and_grad
  def plain(params, b):   # no adaptation: the query loss of the initialisation
    return jax.vmap(lambda qx, qy: _query_loss(model, params, qx, qy))(b.query_x, b.query_y).mean()

  loss, grad = loss_and_grad(BASE, steps=0)(meta, batch)
  want_loss, want_grad = plain(meta["model"], batch)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
  assert_trees_close(grad["model"], want_grad, rtol=1e-10)
  # The support set plays no part.
  other = batch._replace(support_x=batch.support_x[::-1] * 0.5)
  np.testing.assert_array_equal(loss_and_grad(BASE, steps=0)(meta, other)[0], loss)


def test_inner_steps_are_hand_written_sgd(x64):
  """Two inner steps (one step is the same claim, once) equal two textbook SGD
  steps on the support loss, in value and in second-order meta-gradient."""
  model, meta, batch = setup(BASE)

  @jax.jit
  @jax.value_and_grad
  def hand(params, b):
    def task(sx, sy, qx, qy):
      return _query_loss(model, _hand_sgd(model, params, sx, sy, BASE.inner_lr, BASE.inner_steps), qx, qy)
    return jax.vmap(task)(*b).mean()

  loss, grad = loss_and_grad(BASE)(meta, batch)
  want_loss, want_grad = hand(meta["model"], batch)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
  assert_trees_close(grad["model"], want_grad, rtol=1e-10)


def test_first_order_is_the_query_gradient_at_the_adapted_parameters(x64):
  model, meta, batch = setup(BASE)

  @jax.jit
  def hand_first_order(params, b):
    """Mean over tasks of grad L_query(theta_K), theta_K after K SGD steps:
    the adapted parameters are differentiated as if they were the initialisation."""
    def task(sx, sy, qx, qy):
      adapted = _hand_sgd(model, params, sx, sy, BASE.inner_lr, BASE.inner_steps)
      return jax.grad(lambda p: _query_loss(model, p, qx, qy))(adapted)
    return jax.tree.map(lambda g: g.mean(0), jax.vmap(task)(*b))

  _, grad_fo = loss_and_grad(BASE.replace(first_order=True))(meta, batch)
  assert_trees_close(grad_fo["model"], hand_first_order(meta["model"], batch), rtol=1e-10)
  _, grad = loss_and_grad(BASE)(meta, batch)
  assert rel_diff(grad_fo, grad) > 1e-2   # second order is not first order


# -------------------------------------------------------------- flags' effects

def _adapt(cfg, model, meta, batch):
  fn = functools.partial(maml.adapt, model=model, cfg=cfg, steps=cfg.inner_steps)
  return jax.jit(fn)(meta, batch.support_x[0], batch.support_y[0])[0]


@pytest.mark.parametrize("flag,frozen", [(dict(inner_mask="head"), lambda n: not n.startswith("head/")),
                                         (dict(adapt_bn=False), lambda n: "/bn/" in n)],
                         ids=["inner_mask=head", "adapt_bn=False"])
def test_inner_loop_leaves_excluded_parameters_unchanged(x64, flag, frozen):
  cfg = BASE.replace(**flag)
  model, meta, batch = setup(cfg)
  adapted = _adapt(cfg, model, meta, batch)
  names = maml.path_names(meta["model"])
  kinds = set()
  for name, before, after in zip(jax.tree.leaves(names), jax.tree.leaves(meta["model"]),
                                 jax.tree.leaves(adapted)):
    kinds.add(frozen(name))
    if frozen(name):
      np.testing.assert_array_equal(after, before, err_msg=name)
    elif not name.endswith("conv/bias"):   # conv biases before batch norm get no gradient
      assert np.abs(np.asarray(after) - np.asarray(before)).max() > 1e-6, name
  assert kinds == {True, False}           # the mask split the parameters


def test_support_statistics_make_each_query_independent_of_the_others(x64):
  model, meta, batch = setup(BASE.replace(queries=3))
  sx, qx = batch.support_x[0], batch.query_x[0]
  changed = qx.at[2].set(1.0 - qx[2])
  logits = jax.jit(functools.partial(maml.query_logits, model), static_argnums=3)
  before = logits(meta["model"], sx, qx, "support")
  after = logits(meta["model"], sx, changed, "support")
  keep = np.array([i for i in range(len(qx)) if i != 2])
  np.testing.assert_allclose(after[keep], before[keep], rtol=1e-12, atol=1e-12)
  assert np.abs(after[2] - before[2]).max() > 1e-3
  # With query-batch statistics (MAML's convention) the other queries do move.
  before_b = logits(meta["model"], sx, qx, "batch")
  after_b = logits(meta["model"], sx, changed, "batch")
  assert np.abs(after_b[keep] - before_b[keep]).max() > 1e-3
