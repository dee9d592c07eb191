"""Reptile (Nichol et al. 2018): first-order meta-learning without a
gradient through the inner loop.

For each task, `inner_steps` SGD steps at `inner_lr` (`maml_jax.maml.adapt`
with the plain rule) on all of the task's labelled images, support and
queries together (Nichol et al. likewise meta-train on more examples per
class than the test tasks' shots); the pseudo-gradient is

    g = (initialisation - adapted) / (inner_lr * inner_steps),

the mean inner gradient along the path, averaged over the tasks (the task
axis is vmapped) and fed to the outer optimizer (Adam) as a gradient.  The
scaling leaves the direction as Reptile's and keeps the gradient's size near
a gradient's, so that `clip_norm` means what it means for MAML.  At
evaluation the initialisation is adapted on the support set alone, as MAML's
is.  Training metrics: "accuracy" is the adapted network's on the queries,
which it was adapted on (optimistic; validation is the measure), "loss" the
inner loss before the last step, "support_loss" before the first.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maml_jax import maml as engine
from maml_jax.algorithms import maml
from maml_jax.algorithms.base import Algorithm


def meta_grads(meta_params, batch, *, model, cfg, meta_step):
  """(pseudo-gradient shaped like meta_params, mean metrics) over the batch's tasks."""
  del meta_step
  init = meta_params["model"]
  scale = 1.0 / (cfg.inner_lr * cfg.inner_steps)

  def task(sx, sy, qx, qy):
    x, y = jnp.concatenate([sx, qx]), jnp.concatenate([sy, qy])
    params, losses = engine.adapt(meta_params, x, y, model=model, cfg=cfg, steps=cfg.inner_steps)
    grad = jax.tree.map(lambda w0, w: (w0 - w) * scale, init, params)
    logits = engine.query_logits(model, params, sx, qx, cfg.query_bn)
    return grad, {"loss": losses[-1], "accuracy": engine.accuracy(logits, qy), "support_loss": losses[0]}

  grads, metrics = engine.map_tasks(task, batch, cfg.task_map)
  mean = lambda t: jax.tree.map(lambda a: a.mean(0), t)
  return {"model": mean(grads), "lr": jax.tree.map(jnp.zeros_like, meta_params["lr"])}, mean(metrics)


def problems(cfg) -> list[str]:
  return [] if cfg.inner_steps >= 1 else [f"algorithm=reptile needs inner_steps >= 1 (it is {cfg.inner_steps})"]


# Nothing is differentiated through the inner loop, and its rate is fixed.
ALGORITHM = Algorithm("reptile", engine.init_meta_params, meta_grads, maml.adapt_and_score,
                      unused=("first_order", "first_order_until", "learn_inner_lr", "inner_lr_per_element",
                              "multi_step_loss", "msl_epochs", "per_step_bn", "remat", "inner_unroll"),
                      problems=problems)
