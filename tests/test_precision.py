"""Mixed precision (`precision="bfloat16"`): bfloat16 compute, float32 parameters, optimizer state and loss."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maml_jax import maml
from maml_jax.config import ConfigError, get_preset
from maml_jax.episodes import Episodes, episode_labels
from maml_jax.models import model_for
from maml_jax.models.layers import ConvBlock, MLPHead
from maml_jax.models.precision import MixedPrecision
from maml_jax.train_step import make_optimizer

CFG = get_preset("tiny").replace(tasks=4, queries=5, meta_lr=1e-2)
BF16 = CFG.replace(precision="bfloat16")
F32 = jnp.dtype(jnp.float32)


class TwoBlocks(nn.Module):
  """Both batch-norm paths at a fraction of conv4's compile time: block_0's
  folds into its convolution (`layers.conv_bn_folded`), block_1's does not."""
  ways: int

  @nn.compact
  def __call__(self, x, stat_mask=None):
    x = ConvBlock(10, stride=2, impl="gemm", name="block_0")(x, stat_mask)
    x = ConvBlock(10, stride=2, pool=True, impl="gemm", name="block_1")(x, stat_mask)
    return MLPHead((), self.ways, name="head")(x)


def _flat(tree):
  return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def _floats(tree):
  return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def _params(model, seed=0):
  """Meta-parameters of `model` drawn in numpy (He-scaled kernels, batch-norm
  scales near 1): running flax's initialisers eagerly costs seconds."""
  abstract = jax.eval_shape(lambda k: maml.init_meta_params(model, CFG, k, (12, 12, 1)), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = jax.tree_util.keystr(path)
    scale = np.sqrt(2 / np.prod(a.shape[:-1])) if "kernel" in name else 0.2
    return jnp.asarray(("scale" in name) + scale * rng.normal(size=a.shape), a.dtype)
  return abstract, jax.tree_util.tree_map_with_path(draw, abstract)


def test_bfloat16_computes_in_bfloat16_trains_and_its_meta_gradient_is_near_float32():
  # Two compilations of the second-order meta-gradient (float32, bfloat16); the
  # bfloat16 one also meta-trains with the run's optimizer.
  assert isinstance(model_for(BF16), MixedPrecision) and not isinstance(model_for(CFG), MixedPrecision)
  m32 = TwoBlocks(CFG.ways)
  m16 = MixedPrecision(m32)
  abstract, mp = _params(m32)
  assert jax.eval_shape(lambda k: maml.init_meta_params(m16, BF16, k, (12, 12, 1)), jax.random.key(0)) == abstract
  assert _floats(abstract) == {F32}   # bfloat16 compute keeps float32 parameters
  rng = np.random.default_rng(1)
  batch = Episodes(jnp.asarray(rng.random((CFG.tasks, CFG.ways * CFG.shots, 12, 12, 1)), jnp.float32),
                   jnp.asarray(episode_labels(CFG.tasks, CFG.ways, CFG.shots)),
                   jnp.asarray(rng.random((CFG.tasks, CFG.ways * CFG.queries, 12, 12, 1)), jnp.float32),
                   jnp.asarray(episode_labels(CFG.tasks, CFG.ways, CFG.queries)))
  loss = lambda model: lambda p: maml.meta_loss(p, batch, model=model, cfg=CFG)[0]
  lowered = jax.jit(jax.value_and_grad(loss(m16))).lower(mp)
  assert re.search(r"dot_general.*-> tensor<[0-9x]*xbf16>", lowered.as_text())   # bfloat16 matrix multiplies
  assert m16.apply({"params": mp["model"]}, batch.query_x[0]).dtype == F32   # the softmax loss's input

  g32 = jax.jit(jax.grad(loss(m32)))(mp)
  step16 = lowered.compile()
  first, g16 = step16(mp)
  assert _floats(g16) == {F32}
  rel = float(jnp.linalg.norm(_flat(g16) - _flat(g32)) / jnp.linalg.norm(_flat(g32)))
  # Measured 0.032 on this draw, 0.03-0.23 over seven draws of parameters and
  # batch (second order, one inner step; 0.29-0.37 on the 4-block `tiny`
  # network): bfloat16 keeps 8 bits of mantissa and each batch-norm backward
  # pass cancels several of them, so the error grows with depth and with how
  # small the gradient is.  0.1 leaves three times this draw's; float32
  # throughout would give ~1e-6, below the lower bound.
  assert 1e-3 < rel < 0.1, rel

  tx = make_optimizer(BF16, mp)

  @jax.jit   # one small compilation instead of one per optimizer operation
  def update(g, opt, p):
    updates, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, updates), opt

  opt, p = tx.init(mp), mp
  for _ in range(10):
    value, g = step16(p)
    p, opt = update(g, opt, p)
  # Measured 1.55 -> 0.80 over these 10 steps on one batch.
  assert float(value) < 0.7 * float(first), (float(first), float(value))
  assert _floats((p, opt)) == {F32}


def test_precision_is_checked_and_changes_a_resumed_run():
  from maml_jax.checkpoints import config_differences
  with pytest.raises(ConfigError, match="precision='fp8' is not one of float32, bfloat16"):
    CFG.replace(precision="fp8").validate()
  assert set(config_differences(CFG, BF16)) == {"precision"}
