"""Mixed precision (`precision="bfloat16"`): bfloat16 compute, float32 parameters, optimizer state and loss."""
import jax
import jax.numpy as jnp
import optax
import pytest

from maml_jax import maml
from maml_jax.config import ConfigError, get_preset
from maml_jax.data_sources import synthetic_classes
from maml_jax.episodes import EpisodeSampler
from maml_jax.models import model_for
from maml_jax.train_step import make_optimizer

CFG = get_preset("tiny").replace(tasks=4, queries=5, meta_lr=1e-2)
BF16 = CFG.replace(precision="bfloat16")
F32 = jnp.dtype(jnp.float32)


def _flat(tree):
  return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def _floats(tree):
  return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_computes_in_bfloat16_trains_and_its_meta_gradient_is_near_float32():
  # Two compilations of the second-order meta-gradient (float32, bfloat16); the
  # bfloat16 one also meta-trains with the run's optimizer.
  mp = maml.init_meta_params(model_for(CFG), CFG, jax.random.key(0), (12, 12, 1))
  mp16 = maml.init_meta_params(model_for(BF16), BF16, jax.random.key(0), (12, 12, 1))
  assert all(jnp.array_equal(a, b) and b.dtype == F32 for a, b in zip(jax.tree.leaves(mp), jax.tree.leaves(mp16)))
  batch = EpisodeSampler(synthetic_classes(9, 20, 12, 1, 0), tasks=CFG.tasks, ways=CFG.ways, shots=CFG.shots,
                         queries=CFG.queries, seed=0)(0)
  loss = lambda cfg: lambda p: maml.meta_loss(p, batch, model=model_for(cfg), cfg=cfg)[0]
  jaxpr = str(jax.make_jaxpr(loss(BF16))(mp))
  assert "preferred_element_type=bfloat16" in jaxpr   # the matrix multiplies are bfloat16
  logits = model_for(BF16).apply({"params": mp["model"]}, batch.query_x[0])
  assert logits.dtype == F32   # the softmax loss is float32

  g32 = jax.jit(jax.grad(loss(CFG)))(mp)
  step16 = jax.jit(jax.value_and_grad(loss(BF16)))
  first, g16 = step16(mp)
  assert _floats(g16) == {F32}
  rel = float(jnp.linalg.norm(_flat(g16) - _flat(g32)) / jnp.linalg.norm(_flat(g32)))
  # Measured 0.29-0.37 on three batches of this network (second order, one
  # inner step; 0.07-0.08 for the plain gradient without inner steps, 0.5% on
  # the head alone): bfloat16 keeps 8 bits of mantissa and each batch-norm
  # backward pass cancels several of them, so the error grows towards the
  # input.  0.5 leaves margin; a float32 computation would give ~1e-6.
  assert 1e-3 < rel < 0.5, rel

  tx = make_optimizer(BF16, mp)
  opt, p = tx.init(mp), mp
  for _ in range(10):
    value, g = step16(p)
    updates, opt = tx.update(g, opt, p)
    p = optax.apply_updates(p, updates)
  # Measured 1.17 -> 0.85 over these 10 steps on one batch (float32: 1.17 -> 0.87).
  assert float(value) < 0.85 * float(first), (float(first), float(value))
  assert _floats((p, opt)) == {F32}


def test_precision_is_checked_and_changes_a_resumed_run():
  from maml_jax.checkpoints import config_differences
  with pytest.raises(ConfigError, match="precision='fp8' is not one of float32, bfloat16"):
    CFG.replace(precision="fp8").validate()
  assert set(config_differences(CFG, BF16)) == {"precision"}
