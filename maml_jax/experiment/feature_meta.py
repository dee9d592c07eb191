"""Meta-learning the head on frozen pretrained features (the paper's network (a)).

The paper freezes VGG16's ImageNet convolutions and meta-learns only the fully
connected head.  With the convolutions frozen, every image's feature vector is
fixed, so meta-training runs the engine's second-order MAML (`maml.meta_loss`)
on cached feature vectors instead of images: the same computation, orders of
magnitude cheaper.  Episodes are drawn with the engine's `episode_indices`
from the meta-train classes (episode i from (seed, i)); the head with the best
accuracy on meta-validation episodes is kept.

Variants: "meta" (second order, the whole head adapts), "fomaml" (first
order), "anil" (only the output layer adapts in the inner loop; the hidden
layers are learned in the outer loop only).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from maml_jax import maml
from maml_jax.baselines.base_learning import FeatureHead
from maml_jax.config import Config, get_preset
from maml_jax.episodes import ClassImages, Episodes, episode_indices, episode_labels
from maml_jax import io as files

VAL_SEED = 1_000_003


class FeatureSet(NamedTuple):
  """Per-image features of a class-indexed split (rows as in its ClassImages)."""
  features: np.ndarray      # float32 [N, D]
  class_start: np.ndarray   # int32 [num_classes]
  class_count: np.ndarray   # int32 [num_classes]

  @classmethod
  def of(cls, features: np.ndarray, split: ClassImages) -> "FeatureSet":
    return cls(features, np.asarray(split.class_start), np.asarray(split.class_count))


def head_config(method: str, *, steps: int | None = None, seed: int = 0, ways: int = 5) -> Config:
  """The `paper-pretrained` preset's episode and loop settings, for one variant."""
  base = get_preset("paper-pretrained")
  over: dict[str, Any] = dict(ways=ways, seed=seed, inner_mask="head", outer_mask="", dataset="features")
  if method == "fomaml":
    over["first_order"] = True
  elif method == "anil":
    over["inner_mask"] = "out"
  elif method != "meta":
    raise ValueError(f"no meta-learning variant {method!r}; choose meta, fomaml or anil")
  if steps is not None:
    over["steps"] = steps
  return base.replace(**over)


def sample(fs: FeatureSet, cfg: Config, seed: int, i: int, queries: int) -> Episodes:
  """Meta-batch i of feature episodes: support_x [T, ways*shots, D], support_y
  [T, ways*shots], query_x [T, ways*queries, D], query_y (`fs.features` a
  device array)."""
  idx = episode_indices(jax.random.fold_in(jax.random.key(seed), i), jnp.asarray(fs.class_start),
                        jnp.asarray(fs.class_count), tasks=cfg.tasks, ways=cfg.ways, shots=cfg.shots,
                        queries=queries, max_count=int(np.max(fs.class_count)))
  f = fs.features
  return Episodes(f[idx.support], jnp.asarray(episode_labels(cfg.tasks, cfg.ways, cfg.shots)),
                  f[idx.query], jnp.asarray(episode_labels(cfg.tasks, cfg.ways, queries)))


@functools.lru_cache(maxsize=8)
def _steps(cfg: Config, head: FeatureHead):
  from maml_jax.train_step import make_optimizer

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(meta_params, opt_state, batch):
    (loss, metrics), grads = jax.value_and_grad(maml.meta_loss, has_aux=True)(meta_params, batch, model=head, cfg=cfg)
    updates, opt_state = make_optimizer(cfg, meta_params).update(grads, opt_state, meta_params)
    return optax.apply_updates(meta_params, updates), opt_state, metrics

  @jax.jit
  def eval_step(meta_params, batch):
    fn = lambda sx, sy, qx, qy: maml.task_loss(meta_params, sx, sy, qx, qy, model=head, cfg=cfg,
                                               steps=cfg.eval_inner_steps)[1]["accuracy"]
    return maml.map_tasks(fn, batch, cfg.task_map)

  return train_step, eval_step


def meta_train_head(train: FeatureSet, val: FeatureSet, cfg: Config, *, progress: bool = True) -> tuple[Any, dict]:
  """MAML on feature episodes; returns (best meta-parameters, history).

  Validation every `val_every` steps on `val_episodes` fixed episodes of the
  meta-validation classes; the best validation accuracy's parameters are kept.
  """
  from maml_jax.train_step import make_optimizer
  head = FeatureHead(cfg.ways)
  train, val = (s._replace(features=jnp.asarray(s.features, jnp.float32)) for s in (train, val))   # on device once
  meta_params = maml.init_meta_params(head, cfg, jax.random.key(cfg.seed), (train.features.shape[1],))
  opt_state = make_optimizer(cfg, meta_params).init(meta_params)
  train_step, eval_step = _steps(cfg, head)

  def validate(params):
    accs = [eval_step(params, sample(val, cfg, VAL_SEED, i, cfg.eval_queries))
            for i in range(-(-cfg.val_episodes // cfg.tasks))]
    return float(np.mean(np.concatenate([np.asarray(a) for a in accs])[:cfg.val_episodes]))

  best = {"step": 0, "val_accuracy": validate(meta_params)}
  best_params = jax.device_get(meta_params)
  history = [{"step": 0, "val_accuracy": best["val_accuracy"]}]
  bar = tqdm(range(cfg.steps), desc=f"meta-train head ({'first' if cfg.first_order else 'second'} order, "
             f"inner: {cfg.inner_mask})", disable=not progress, dynamic_ncols=True)
  for i in bar:
    meta_params, opt_state, metrics = train_step(meta_params, opt_state, sample(train, cfg, cfg.seed, i, cfg.queries))
    step = i + 1
    if step % cfg.val_every == 0 or step == cfg.steps:
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(f"head meta-training loss became {loss} at step {step}")
      acc = validate(meta_params)
      history.append({"step": step, "loss": loss, "val_accuracy": acc})
      bar.set_postfix(loss=f"{loss:.3f}", val=f"{acc:.3f}")
      if acc > best["val_accuracy"]:
        best = {"step": step, "val_accuracy": acc}
        best_params = jax.device_get(meta_params)
  return best_params, {"best": best, "history": history}


def load_or_train_head(train: FeatureSet, val: FeatureSet, cfg: Config, cache_dir: str, tag: str,
                       progress: bool = True) -> tuple[Any, dict]:
  """`meta_train_head`, cached in `<cache_dir>/head-<tag>-<key>.msgpack` (+ .json)."""
  from flax import serialization
  fp = hashlib.sha1(np.ascontiguousarray(train.features[:: max(1, len(train.features) // 64)]).tobytes()).hexdigest()
  key = hashlib.sha1(json.dumps([dataclasses.asdict(cfg), fp, train.features.shape, val.features.shape]).encode())
  path = os.path.join(cache_dir, f"head-{tag}-{key.hexdigest()[:12]}.msgpack")
  head = FeatureHead(cfg.ways)
  template = maml.init_meta_params(head, cfg, jax.random.key(0), (train.features.shape[1],))
  if os.path.exists(path) and os.path.exists(path + ".json"):
    with open(path, "rb") as f:
      params = serialization.from_bytes(template, f.read())
    with open(path + ".json") as f:
      return params, json.load(f)
  params, info = meta_train_head(train, val, cfg, progress=progress)
  files.write_bytes(path, serialization.to_bytes(params))
  files.write_json(path + ".json", info)
  return params, info
