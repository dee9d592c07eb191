"""Prototypical networks (Snell et al. 2017): no inner loop.

The network without its output layer embeds the images
(`maml_jax.models.embed`); each class's prototype is the mean embedding of
its support images, and a query's logits are the negative squared Euclidean
distances to the prototypes.  The loss is the queries' cross-entropy, its
gradient the meta-gradient; evaluation scores the same way.

The output layer's parameters stay in the network (unused while training:
their gradient is zero).  `adapt_and_score` returns them replaced by the
equivalent linear classifier, kernel 2 p_c and bias -|p_c|^2 (the logits
-|f - p_c|^2 shifted by |f|^2, the same for every class), so that the adapted
network classifies new images through a plain `model.apply`, as any
algorithm's does (`learner.predict_fn`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from maml_jax import maml as engine
from maml_jax.algorithms.base import Algorithm
from maml_jax.models import Embedding


def prototypes(emb_s, sy, ways: int):
  """Class means [ways, D] of the support embeddings emb_s [n, D] (labels sy
  int32 [n]); a class without support images gets the zero vector."""
  onehot = jax.nn.one_hot(sy, ways, dtype=emb_s.dtype)                  # [n, ways]
  return (onehot.T @ emb_s) / jnp.maximum(onehot.sum(0), 1.0)[:, None]


def distance_logits(emb_q, protos):
  """-|q - p_c|^2: logits [m, ways] of query embeddings [m, D] against prototypes [ways, D]."""
  return -jnp.sum(jnp.square(emb_q[:, None, :] - protos[None, :, :]), axis=-1)


def task_logits(params, sx, sy, qx, *, model, ways: int, query_bn: str):
  """(prototypes [ways, D], query logits [m, ways]) of one task.  The support is
  embedded with its own batch-norm statistics; the queries with theirs
  ("batch") or the support set's ("support")."""
  embed = Embedding(model)
  protos = prototypes(embed.apply({"params": params}, sx), sy, ways)
  return protos, distance_logits(engine.query_logits(embed, params, sx, qx, query_bn), protos)


def meta_grads(meta_params, batch, *, model, cfg, meta_step):
  """(gradient of the mean query cross-entropy, mean metrics) over the batch's tasks."""
  del meta_step

  def loss(meta_params):
    def task(sx, sy, qx, qy):
      _, logits = task_logits(meta_params["model"], sx, sy, qx, model=model, ways=cfg.ways, query_bn=cfg.query_bn)
      ce = engine.cross_entropy(logits, qy)
      return ce, {"loss": ce, "accuracy": engine.accuracy(logits, qy)}
    losses, metrics = engine.map_tasks(task, batch, cfg.task_map)
    return losses.mean(), jax.tree.map(jnp.mean, metrics)

  (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(meta_params)
  return grads, metrics


def adapt_and_score(meta_params, sx, sy, qx, *, model, cfg, steps: int, query_bn: str):
  """(the network with the prototype classifier as its output layer, query logits [m, ways])."""
  del steps
  params = meta_params["model"]
  protos, logits = task_logits(params, sx, sy, qx, model=model, ways=cfg.ways, query_bn=query_bn)
  out = params["head"]["out"]
  head = {**params["head"], "out": {"kernel": (2.0 * protos.T).astype(out["kernel"].dtype),
                                    "bias": (-jnp.sum(jnp.square(protos), -1)).astype(out["bias"].dtype)}}
  return {**params, "head": head}, logits


ALGORITHM = Algorithm("protonet", engine.init_meta_params, meta_grads, adapt_and_score,
                      unused=("inner_lr", "first_order", "first_order_until", "learn_inner_lr",
                              "inner_lr_per_element", "multi_step_loss", "msl_epochs", "per_step_bn", "remat",
                              "inner_unroll", "adapt_bn", "inner_mask"),
                      fixed={"inner_steps": 0, "eval_inner_steps": 0})
