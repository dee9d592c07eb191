"""Second-order MAML as pure functions over pytrees.

Meta-parameters are `{"model": params, "lr": lrs}`: the network's
initialisation and, when the inner learning rate is learned, either MAML++'s
per-layer per-step rates (LSLR, `learn_inner_lr`: `lrs` leaves of shape
[inner_steps]) or Meta-SGD's per-element rates (`inner_lr_per_element`: leaves
of shape [1, *param.shape], the same rate at every step); otherwise `"lr"` is
an empty dict and `config.inner_lr` is used.

MAML++ options (docs/maml-plus-plus.md): `per_step_bn` gives every batch-norm
scale and shift a leading inner-step axis [L, C] (L = max(inner_steps, 1)); the
forward passes of inner step k (and the query pass after it) use slice
min(k, L-1).  `multi_step_loss` weights the query loss after every inner step
(`msl_weights`).

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

from maml_jax import inner_rules
from maml_jax.config import Config, ConfigError
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


def check_masks(params: PyTree, cfg: Config) -> None:
  """ConfigError if `inner_mask` or `outer_mask` matches no parameter of the
  network: the loop it selects would update nothing and the run would say
  nothing of it."""
  names = jax.tree.leaves(path_names(params))
  for option in ("inner_mask", "outer_mask"):
    pattern = getattr(cfg, option)
    if pattern and not any(re.search(pattern, n) for n in names):
      shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
      raise ConfigError(f"--{option.replace('_', '-')} {pattern!r} matches no parameter of the {cfg.model} "
                        f"network (its parameter paths: {shown})")


def inner_mask(params: PyTree, cfg: Config) -> PyTree:
  """Which parameters the inner loop adapts (`inner_mask`, minus BN unless `adapt_bn`)."""
  names = path_names(params)
  m = regex_mask(params, cfg.inner_mask)
  return jax.tree.map(lambda keep, n: keep and (cfg.adapt_bn or "/bn/" not in f"/{n}/"), m, names)


def is_bn(name: str) -> bool:
  """Whether a parameter path names a batch-norm scale or shift."""
  return "/bn/" in f"/{name}/"


def bn_steps(cfg: Config) -> int:
  """Length L of the per-step batch-norm axis (MAML++'s per-step scale/shift)."""
  return max(cfg.inner_steps, 1)


def params_at_step(params: PyTree, cfg: Config, k) -> PyTree:
  """The network's parameters for inner step `k` (int or traced int32 []):
  with `per_step_bn`, each batch-norm leaf [L, C] becomes its slice
  min(k, L-1) [C]; otherwise `params` unchanged."""
  if not cfg.per_step_bn:
    return params
  return jax.tree.map(lambda w, n: w[jnp.minimum(k, w.shape[0] - 1)] if is_bn(n) else w,
                      params, path_names(params))


def init_meta_params(model, cfg: Config, key, image_shape) -> PyTree:
  """Initial meta-parameters for images of `image_shape` (H, W, C)."""
  params = model.init(key, jnp.zeros((2,) + tuple(image_shape), jnp.float32))["params"]
  check_masks(params, cfg)
  if cfg.per_step_bn:   # every inner step starts from the same scale and shift
    params = jax.tree.map(lambda w, n: jnp.broadcast_to(w, (bn_steps(cfg),) + w.shape) if is_bn(n) else w,
                          params, path_names(params))
  return {"model": params, "lr": inner_rules.from_config(cfg).init(params)}


def msl_weights(cfg: Config, steps: int, meta_step) -> jax.Array:
  """MAML++'s multi-step loss weights [steps] at meta-batch `meta_step` (int32 []).

  Antoniou et al.'s schedule (`get_per_step_loss_importance_vector`, with
  meta-batches in place of epochs): uniform 1/S at the start; each non-final
  weight falls by t/(S*N) down to a floor of 0.03/S and the last rises by
  t(S-1)/(S*N) up to 1 - (S-1)*0.03/S, N = `msl_epochs`.  From meta-batch N on,
  the last step alone (plain MAML's loss).
  """
  s = steps
  t = jnp.asarray(meta_step).astype(jnp.result_type(float))   # float64 under x64
  n = float(max(cfg.msl_epochs, 1))
  floor = 0.03 / s
  early = jnp.maximum(1.0 / s - t / (s * n), floor) * jnp.ones((s - 1,))
  last = jnp.minimum(1.0 / s + t * (s - 1) / (s * n), 1.0 - (s - 1) * floor)
  w = jnp.concatenate([early, last[None]])
  return jnp.where(t < n, w, jax.nn.one_hot(s - 1, s))


def step_lrs(meta_params: PyTree, cfg: Config, steps: int) -> PyTree:
  """The inner learning rate of each of `steps` steps: a tree of [steps] arrays
  ([steps, *param.shape] for per-element rates), as the configuration's inner
  rule (`maml_jax.inner_rules`) applies them.

  Learned rates beyond the trained step count reuse the last one, so
  evaluation may take more steps than meta-training did.
  """
  rule = inner_rules.from_config(cfg)
  return jax.vmap(lambda k: rule.rate(meta_params["model"], meta_params["lr"], k))(jnp.arange(steps))


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

def adapt(meta_params, x, y, *, model, cfg: Config, steps: int, unroll: int = 1, query=None,
          first_order: bool | None = None, return_stacked: bool = False):
  """Adapts the initialisation to one task's support set.

  Args:
    meta_params: {"model": params, "lr": lrs}.
    x: float32 [n, H, W, C] support images; y: int32 [n] labels.
    steps: inner SGD steps (0 returns the initialisation unchanged).
    unroll: inner steps per scan iteration (`inner_unroll`).
    query: optional (qx [m, H, W, C], qy int32 [m]): also return the query
      loss after every step (the multi-step loss).
    first_order: overrides `cfg.first_order` (derivative-order annealing).
    return_stacked: keep per-step batch-norm leaves stacked [L, C].
  Returns:
    (adapted params, support losses [steps] before each step), plus the query
    losses [steps] after each step when `query` is given.  With `per_step_bn`
    the params are those of the last step (BN slice min(steps-1, L-1)), shaped
    like the network's own, unless `return_stacked`.
  """
  params, rates = meta_params["model"], meta_params["lr"]
  mask = inner_mask(params, cfg)
  rule = inner_rules.from_config(cfg)
  first_order = cfg.first_order if first_order is None else first_order

  def support_loss(p, k):
    return cross_entropy(_apply(model, params_at_step(p, cfg, k), x), y)

  def step(p, k):
    loss, g = jax.value_and_grad(support_loss)(p, k)
    if first_order:
      g = lax.stop_gradient(g)
    p = jax.tree.map(lambda w, u, m: w + u if m else w, p, rule.update(g, rates, k), mask)
    if query is None:
      return p, loss
    logits = query_logits(model, params_at_step(p, cfg, k), x, query[0], cfg.query_bn)
    return p, (loss, cross_entropy(logits, query[1]))

  if cfg.remat:
    step = jax.checkpoint(step)
  if steps == 0:
    out = (params, jnp.zeros((0,), jnp.float32))
  else:
    out = lax.scan(step, params, jnp.arange(steps, dtype=jnp.int32), unroll=max(1, min(unroll, steps)))
  p, losses = out
  if not return_stacked:
    p = params_at_step(p, cfg, max(steps - 1, 0))
  if query is not None:
    return (p,) + tuple(losses) if steps else (p, losses, losses)
  return p, losses


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


def adapt_and_score(meta_params, sx, sy, qx, *, model, cfg: Config, steps: int, query_bn: str, unroll: int = 1,
                    qy=None, first_order: bool | None = None):
  """Adapts to one task's support set, then scores its queries: the one
  "adapt, then score" of training (`task_loss`), evaluation
  (`evaluate.query_probs`, the eval step) and the learner (`learner.adapt_fn`).

  Args:
    sx: float [n, H, W, C] support images; sy: int32 [n]; qx: float [m, H, W, C].
    query_bn: batch-norm statistics of the queries: "batch" (their own, MAML's
      convention in meta-training and meta-test) or "support" (the support
      set's, so that each query is classified on its own).
    qy: int32 [m] query labels: also return the query loss after every inner
      step (the multi-step loss).
  Returns:
    (adapted params, query logits [m, ways], support losses [steps] before each
    step, query losses [steps] after each step or None without `qy`).
  """
  kw = dict(model=model, cfg=cfg, steps=steps, unroll=unroll, first_order=first_order)
  query_losses = None
  if qy is not None and steps:
    params, support_losses, query_losses = adapt(meta_params, sx, sy, query=(qx, qy), **kw)
  else:
    params, support_losses = adapt(meta_params, sx, sy, **kw)
  return params, query_logits(model, params, sx, qx, query_bn), support_losses, query_losses


def task_loss(meta_params, sx, sy, qx, qy, *, model, cfg: Config, steps: int, unroll: int = 1,
              step_weights=None, first_order: bool | None = None):
  """Query loss of one task after adaptation, and its metrics.

  `step_weights` [steps] (the multi-step loss): the loss is the weighted sum
  of the query losses after each inner step; metrics stay those of the last.
  """
  _, logits, support_losses, query_losses = adapt_and_score(
      meta_params, sx, sy, qx, model=model, cfg=cfg, steps=steps, query_bn=cfg.query_bn, unroll=unroll,
      qy=qy if step_weights is not None else None, first_order=first_order)
  loss = final = cross_entropy(logits, qy)
  if query_losses is not None:
    loss = jnp.sum(step_weights * query_losses)
  return loss, {"loss": final, "accuracy": accuracy(logits, qy),
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


def meta_loss(meta_params, batch: Episodes, *, model, cfg: Config, steps: int | None = None,
              meta_step=None, first_order: bool | None = None):
  """Mean query loss over the tasks of a meta-batch (the paper sums; the mean
  only rescales the gradient, which Adam undoes), and mean metrics.

  `meta_step` (int32 [], the meta-batch index) sets the multi-step loss
  weights when `multi_step_loss` is on; `first_order` overrides the config's.
  """
  steps = cfg.inner_steps if steps is None else steps
  unroll = inner_unroll(cfg, steps)   # the path that is differentiated
  weights = None
  if cfg.multi_step_loss and steps:
    weights = msl_weights(cfg, steps, 0 if meta_step is None else meta_step)
  fn = lambda sx, sy, qx, qy: task_loss(meta_params, sx, sy, qx, qy, model=model, cfg=cfg, steps=steps,
                                        unroll=unroll, step_weights=weights, first_order=first_order)
  losses, metrics = map_tasks(fn, batch, cfg.task_map)
  return losses.mean(), jax.tree.map(jnp.mean, metrics)


# ------------------------------------------------------------------ prediction

def predict_logits(params, support_x, query_x, *, model):
  """Logits [m, ways] of adapted `params` with the support set's BN statistics."""
  return query_logits(model, params, support_x, query_x, "support")
