"""Second-order MAML as pure functions over pytrees.

Meta-parameters are `{"model": params, "lr": lrs}`: the network's
initialisation and, when the inner learning rate is learned (Meta-SGD /
MAML++), one rate per parameter tensor and inner step (`lrs` leaves of shape
[inner_steps]); otherwise `"lr"` is an empty dict and `config.inner_lr` is used.

The inner loop is one `lax.scan` of SGD steps on the support loss; the
meta-gradient is `jax.grad` through it (second order).  `first_order` stops
the gradient through the inner gradients; `remat` recomputes each inner step
in the backward pass.  Tasks are batched with `vmap` or `lax.map` (task axis
first) inside a `shard_map` over the device mesh, so the same code runs on one
device or many.

Batch norm: the statistics of the current batch in both loops (MAML's
convention).  With `query_bn="support"` the queries are normalised with the
support set's statistics instead (`stat_mask`), so that each query's
prediction depends on the support set and itself only.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from maml_jax.config import Config
from maml_jax.episodes import Episodes

PyTree = Any


# ----------------------------------------------------------------- parameters

def path_names(tree: PyTree) -> PyTree:
  """The same tree with each leaf replaced by its '/'-joined key path."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p), tree)


def regex_mask(params: PyTree, pattern: str) -> PyTree:
  """Bool tree: True where the parameter path matches `pattern` ('' = all)."""
  rx = re.compile(pattern) if pattern else None
  return jax.tree.map(lambda name: rx is None or bool(rx.search(name)), path_names(params))


def inner_mask(params: PyTree, cfg: Config) -> PyTree:
  """Which parameters the inner loop adapts (`inner_mask`, minus BN unless `adapt_bn`)."""
  names = path_names(params)
  m = regex_mask(params, cfg.inner_mask)
  return jax.tree.map(lambda keep, n: keep and (cfg.adapt_bn or "/bn/" not in f"/{n}/"), m, names)


def init_meta_params(model, cfg: Config, key, image_shape) -> PyTree:
  """Initial meta-parameters for images of `image_shape` (H, W, C)."""
  params = model.init(key, jnp.zeros((2,) + tuple(image_shape), jnp.float32))["params"]
  lr = {}
  if cfg.learn_inner_lr:
    lr = jax.tree.map(lambda _: jnp.full((max(cfg.inner_steps, 1),), cfg.inner_lr, jnp.float32), params)
  return {"model": params, "lr": lr}


def step_lrs(meta_params: PyTree, cfg: Config, steps: int) -> PyTree:
  """Per-step learning rates as a tree of [steps] arrays (scan's xs).

  Learned rates beyond the trained step count reuse the last one, so
  evaluation may take more steps than meta-training did.
  """
  params = meta_params["model"]
  if not meta_params["lr"]:
    return jax.tree.map(lambda _: jnp.full((steps,), cfg.inner_lr, jnp.float32), params)
  return jax.tree.map(lambda lr: lr[jnp.minimum(jnp.arange(steps), lr.shape[0] - 1)], meta_params["lr"])


# --------------------------------------------------------------------- losses

def cross_entropy(logits, labels):
  """Mean softmax cross-entropy; logits [B, ways], labels int [B]."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def _apply(model, params, x, stat_mask=None):
  return model.apply({"params": params}, x, stat_mask)


def query_logits(model, params, support_x, query_x, query_bn: str = "batch"):
  """Query logits [m, ways] with batch-norm statistics of the queries ("batch",
  MAML's convention) or of the support rows only ("support")."""
  if query_bn == "batch":
    return _apply(model, params, query_x)
  n = support_x.shape[0]
  x = jnp.concatenate([support_x, query_x])
  mask = jnp.concatenate([jnp.ones((n,)), jnp.zeros((query_x.shape[0],))])
  return _apply(model, params, x, mask)[n:]


# ------------------------------------------------------------------ inner loop

def adapt(meta_params, x, y, *, model, cfg: Config, steps: int, unroll: int = 1):
  """Adapts the initialisation to one task's support set.

  Args:
    meta_params: {"model": params, "lr": lrs}.
    x: float32 [n, H, W, C] support images; y: int32 [n] labels.
    steps: inner SGD steps (0 returns the initialisation unchanged).
    unroll: inner steps per scan iteration (`inner_unroll`).
  Returns:
    (adapted params, support losses [steps] before each step).
  """
  params = meta_params["model"]
  mask = inner_mask(params, cfg)

  def support_loss(p):
    return cross_entropy(_apply(model, p, x), y)

  def step(p, lrs):
    loss, g = jax.value_and_grad(support_loss)(p)
    if cfg.first_order:
      g = lax.stop_gradient(g)
    p = jax.tree.map(lambda w, gw, lr, m: w - lr * gw if m else w, p, g, lrs, mask)
    return p, loss

  if cfg.remat:
    step = jax.checkpoint(step)
  if steps == 0:
    return params, jnp.zeros((0,), jnp.float32)
  return lax.scan(step, params, step_lrs(meta_params, cfg, steps), unroll=max(1, min(unroll, steps)))


def inner_unroll(cfg: Config, steps: int) -> int:
  """Inner steps per scan iteration when the meta-gradient goes through them.

  Unrolled, the backward pass reads each step's intermediates where the
  forward pass left them; rolled, scan stacks them into buffers and slices
  them back out, which costs a large share of a meta-batch on the CPU.  With
  remat the stored intermediates are few and unrolling measured slower and
  larger; and compile time grows with every unrolled step, hence the cap
  (measurements: docs/speed.md).
  """
  if cfg.inner_unroll:
    return cfg.inner_unroll
  return steps if not cfg.remat and steps <= 8 else 1


def task_loss(meta_params, sx, sy, qx, qy, *, model, cfg: Config, steps: int, unroll: int = 1):
  """Query loss of one task after adaptation, and its metrics."""
  params, support_losses = adapt(meta_params, sx, sy, model=model, cfg=cfg, steps=steps, unroll=unroll)
  logits = query_logits(model, params, sx, qx, cfg.query_bn)
  loss = cross_entropy(logits, qy)
  return loss, {"loss": loss, "accuracy": accuracy(logits, qy),
                "support_loss": support_losses[0] if steps else loss}


def default_task_map() -> str:
  """The task batching that measured fastest: `vmap`, on the CPU too (batched
  matrix multiplies read the parameters once for all tasks; docs/speed.md).
  `lax.map` holds one task's intermediates at a time: use it to save memory."""
  return "vmap"


def map_tasks(fn: Callable, batch: Episodes, how: str):
  """Applies `fn(sx, sy, qx, qy)` to every task of the batch (task axis first)."""
  how = default_task_map() if how == "auto" else how
  if how == "vmap":
    return jax.vmap(fn)(*batch)
  return lax.map(lambda t: fn(*t), tuple(batch))


def meta_loss(meta_params, batch: Episodes, *, model, cfg: Config, steps: int | None = None):
  """Mean query loss over the tasks of a meta-batch (the paper sums; the mean
  only rescales the gradient, which Adam undoes), and mean metrics."""
  steps = cfg.inner_steps if steps is None else steps
  unroll = inner_unroll(cfg, steps)   # the path that is differentiated
  fn = lambda sx, sy, qx, qy: task_loss(meta_params, sx, sy, qx, qy, model=model, cfg=cfg, steps=steps,
                                        unroll=unroll)
  losses, metrics = map_tasks(fn, batch, cfg.task_map)
  return losses.mean(), jax.tree.map(jnp.mean, metrics)


# ------------------------------------------------------------------ prediction

def predict_logits(params, support_x, query_x, *, model):
  """Logits [m, ways] of adapted `params` with the support set's BN statistics."""
  return query_logits(model, params, support_x, query_x, "support")
