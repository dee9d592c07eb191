"""MAML (Finn et al. 2017) as an algorithm: the meta-gradient is `jax.grad`
of the query loss after the inner loop (`maml_jax.maml.meta_loss`).

Second order by default; `first_order` stops the gradient through the inner
gradients; `first_order_until` N (MAML++'s derivative-order annealing) is
first order for meta-batches 0 .. N-1 and second order from N on.  The other
MAML++ options (learned rates, multi-step loss, per-step batch norm) are
settings of the engine (`maml_jax.maml`, `maml_jax.inner_rules`).
"""
from __future__ import annotations

import jax

from maml_jax import maml as engine
from maml_jax.algorithms.base import Algorithm


def meta_grads(meta_params, batch, *, model, cfg, meta_step):
  """(meta-gradient shaped like meta_params, mean metrics) over the batch's tasks.

  With `first_order_until` N, both derivative orders are compiled into the
  one step and `lax.cond` on the traced meta-batch index runs one of them: the
  first-order phase costs what first order costs, the switch needs no host
  sync or second program, and a resumed run picks the order from its restored
  counter.
  """
  def grads(first_order):
    def fn(meta_params, batch, meta_step):
      (_, metrics), g = jax.value_and_grad(engine.meta_loss, has_aux=True)(
          meta_params, batch, model=model, cfg=cfg, meta_step=meta_step, first_order=first_order)
      return g, metrics
    return fn

  if cfg.first_order_until > 0 and not cfg.first_order:
    return jax.lax.cond(meta_step < cfg.first_order_until, grads(True), grads(False), meta_params, batch, meta_step)
  return grads(None)(meta_params, batch, meta_step)


def adapt_and_score(meta_params, sx, sy, qx, *, model, cfg, steps: int, query_bn: str):
  """(adapted params, query logits [m, ways]) after `steps` inner steps."""
  return engine.adapt_and_score(meta_params, sx, sy, qx, model=model, cfg=cfg, steps=steps, query_bn=query_bn)[:2]


ALGORITHM = Algorithm("maml", engine.init_meta_params, meta_grads, adapt_and_score)
