"""The jitted meta-train and evaluation steps, sharded over the task axis.

`make_train_step` returns one jitted `step(state, batch) -> (state, metrics)`
with the state donated.  The batch's task axis is split over a 1-D device mesh
(`jax.shard_map`); each device adapts its tasks, the meta-gradients are
averaged across devices (`pmean`), and the parameters stay replicated.  On one
device this is the plain computation.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from maml_jax import algorithms, maml
from maml_jax.config import Config
from maml_jax.episodes import Episodes

AXIS = "tasks"


class TrainState(NamedTuple):
  step: jax.Array          # int32 []
  meta_params: Any         # {"model": params, "lr": lrs}
  opt_state: Any


def make_mesh(tasks: int, devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over as many devices as evenly divide the task count."""
  devices = list(devices if devices is not None else jax.devices())
  n = math.gcd(tasks, len(devices))
  return jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n])


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def shard_batch(batch: Episodes, mesh) -> Episodes:
  """Places a batch with its task axis split over the mesh."""
  return jax.device_put(batch, batch_sharding(mesh))


def replicate(tree, mesh):
  """Places a pytree on every device of the mesh (parameters, optimizer state)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def make_optimizer(cfg: Config, meta_params) -> optax.GradientTransformation:
  """Adam with global-norm clipping; parameters outside `outer_mask` are frozen."""
  lr = cfg.meta_lr
  if cfg.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(cfg.meta_lr, max(cfg.steps, 1), alpha=0.05)
  tx = optax.adam(lr)
  if cfg.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
  if not cfg.outer_mask:
    return tx
  labels = {"model": jax.tree.map(lambda m: "train" if m else "freeze",
                                  maml.regex_mask(meta_params["model"], cfg.outer_mask)),
            "lr": jax.tree.map(lambda _: "train", meta_params["lr"])}
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def init_state(model, cfg: Config, key, image_shape) -> TrainState:
  meta_params = algorithms.get(cfg.algorithm).init(model, cfg, key, image_shape)
  opt_state = make_optimizer(cfg, meta_params).init(meta_params)
  return TrainState(jnp.zeros((), jnp.int32), meta_params, opt_state)


def _sharded_grad(model, cfg: Config, mesh):
  """(meta_params, batch, meta_step) -> (loss, metrics, grads), averaged over all
  tasks: the algorithm's `meta_grads` on each device's tasks, then `pmean`;
  loss is metrics["loss"]."""
  alg = algorithms.get(cfg.algorithm)

  def local(meta_params, batch, meta_step):
    grads, metrics = alg.meta_grads(meta_params, batch, model=model, cfg=cfg, meta_step=meta_step)
    return jax.lax.pmean((metrics["loss"], metrics, grads), AXIS)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=P(), check_vma=False)


def make_train_step(model, cfg: Config, mesh):
  """The jitted meta-train step; `state` is donated.

  After a step whose loss or gradient norm is not finite the step counter is
  -(that step) and stays so (`failed_step`); the host stops before saving.  metrics: {"loss", "accuracy", ..., "grad_norm", "finite"}.
  """
  grad_fn = _sharded_grad(model, cfg, mesh)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state: TrainState, batch: Episodes):
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding(mesh))
    # The meta-batch index (the counter is -(failed step) after a failure).
    loss, metrics, grads = grad_fn(state.meta_params, batch, jnp.abs(state.step))
    tx = make_optimizer(cfg, state.meta_params)
    updates, opt_state = tx.update(grads, state.opt_state, state.meta_params)
    meta_params = optax.apply_updates(state.meta_params, updates)
    grad_norm = optax.tree.norm(grads)
    # A non-finite loss or gradient norm turns the step counter into -(that
    # step) for good.  The host reads the counter at every sync (log, validation,
    # checkpoint) before it evaluates or saves anything, so the run stops there
    # with the last good checkpoint on disk and no NaN is ever saved.  Only
    # scalars are checked and selected: the parameters are not copied.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    counter = jnp.where(state.step < 0, state.step, jnp.where(finite, state.step + 1, -(state.step + 1)))
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite)
    return TrainState(counter, meta_params, opt_state), metrics

  return step


def failed_step(state: TrainState) -> int | None:
  """The step whose loss or gradient was not finite, or None (a host sync)."""
  step = int(state.step)
  return -step if step < 0 else None


def make_eval_step(model, cfg: Config, mesh, steps: int | None = None, task_accuracy=None):
  """Jitted `(meta_params, batch) -> accuracy [T]` after `steps` inner steps
  (default: `eval_inner_steps`), per task, no gradient to the initialisation.

  `task_accuracy(meta_params, sx, sy, qx, qy, steps=) -> []` replaces the one
  initialisation's query accuracy (`evaluate.ensemble_accuracy` scores a
  top-K ensemble, its meta_params stacked [K, ...])."""
  steps = cfg.eval_inner_steps if steps is None else steps
  if task_accuracy is None:
    adapt_and_score = algorithms.get(cfg.algorithm).adapt_and_score
    task_accuracy = lambda meta_params, sx, sy, qx, qy, steps: maml.accuracy(adapt_and_score(
        meta_params, sx, sy, qx, model=model, cfg=cfg, steps=steps, query_bn=cfg.query_bn)[1], qy)

  def local(meta_params, batch):
    fn = lambda sx, sy, qx, qy: task_accuracy(meta_params, sx, sy, qx, qy, steps=steps)
    return maml.map_tasks(fn, batch, cfg.task_map)

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS), check_vma=False)
  return jax.jit(lambda meta_params, batch: sharded(
      meta_params, jax.lax.with_sharding_constraint(batch, batch_sharding(mesh))))
