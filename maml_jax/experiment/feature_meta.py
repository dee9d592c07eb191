"""Meta-learning the head on frozen pretrained features (the paper's network (a)).

The paper freezes VGG16's ImageNet convolutions and meta-learns only the fully
connected head.  With the convolutions frozen, every image's feature vector is
fixed, so the head is meta-trained on cached feature vectors instead of images:
the same computation, orders of magnitude cheaper.  The training is the
engine's own (`train.train_and_evaluate`: episodes from (seed, step), the
sharded second-order step, validation on fixed episodes with the best
checkpoint kept, orbax checkpoints, resumption), given the features as float32
`ClassImages` and `FeatureHead` as the network.

Variants (`meta_runs.VARIANTS`, the same as for the scratch network):
"meta" (second order, the whole head adapts), "fomaml" (first order), "anil"
(the `anil` algorithm: only the output layer adapts in the inner loop).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, NamedTuple

import numpy as np

from maml_jax.baselines.base_learning import FeatureHead
from maml_jax.config import Config, get_preset
from maml_jax.data.class_images import ClassImages


class FeatureSet(NamedTuple):
  """Per-image features of a class-indexed split (rows as in its ClassImages)."""
  features: np.ndarray      # float32 [N, D]
  class_start: np.ndarray   # int32 [num_classes]
  class_count: np.ndarray   # int32 [num_classes]
  ordered: bool = False     # ordered classes (bone-age bins): tasks keep their order (`ClassImages.ordered`)

  @classmethod
  def of(cls, features: np.ndarray, split: ClassImages) -> "FeatureSet":
    return cls(features, np.asarray(split.class_start), np.asarray(split.class_count))

  def as_classes(self) -> ClassImages:
    return ClassImages(np.asarray(self.features, np.float32), np.asarray(self.class_start, np.int32),
                       np.asarray(self.class_count, np.int32), ordered=self.ordered)


def head_config(method: str, *, steps: int | None = None, seed: int = 0, ways: int = 5) -> Config:
  """The `paper-pretrained` preset's episode and loop settings, for one variant."""
  from maml_jax.experiment.meta_runs import variant_config
  over: dict[str, Any] = {"ways": ways, "seed": seed, "inner_mask": "head", "outer_mask": "", "dataset": "features"}
  if steps is not None:
    over["steps"] = steps
  return variant_config(get_preset("paper-pretrained").replace(**over), method)


def meta_train_head(train: FeatureSet, val: FeatureSet, cfg: Config, workdir: str, *,
                    progress: bool = True) -> tuple[Any, dict]:
  """MAML on feature episodes with the engine's loop in `workdir`; returns (best
  meta-parameters, {"best": {"step", "val_accuracy"}, "results": results.json}).

  The meta-test evaluation at the end runs on the validation classes (the
  experiment measures its own test classes); a run found complete in `workdir`
  is read back, an interrupted one resumes from its checkpoints.
  """
  from maml_jax import checkpoints
  from maml_jax.train import train_and_evaluate
  import jax
  head = FeatureHead(cfg.ways)
  results_path = os.path.join(workdir, "results.json")
  if not os.path.exists(results_path):
    splits = {"train": train.as_classes(), "val": val.as_classes(), "test": val.as_classes()}
    resume = os.path.isdir(os.path.join(workdir, "checkpoints"))
    train_and_evaluate(cfg.replace(test_episodes=cfg.val_episodes), workdir, resume=resume, progress=progress,
                       splits=splits, model=head)
  with open(results_path) as f:
    results = json.load(f)
  ck = checkpoints.Checkpoints(workdir, cfg.keep_checkpoints)
  try:
    template = checkpoints.abstract_state(head, cfg, (train.features.shape[1],))
    use_best = ck.best.latest_step() is not None
    # With keep_best > 1 the newest kept checkpoint need not be the best.
    step = results["checkpoint_step"] if use_best and cfg.keep_best > 1 else None
    state = ck.restore(template, best=use_best, step=step)
  finally:
    ck.close()
  best = {"step": int(state.step), "val_accuracy": results.get("best_val_accuracy")}
  return jax.device_get(state.meta_params), {"best": best, "results": results}


def load_or_train_head(train: FeatureSet, val: FeatureSet, cfg: Config, cache_dir: str, tag: str,
                       progress: bool = True) -> tuple[Any, dict]:
  """`meta_train_head` in `<cache_dir>/head-<tag>-<key>/`, the key naming the
  settings and the features, so a finished head is trained once."""
  fp = hashlib.sha1(np.ascontiguousarray(train.features[:: max(1, len(train.features) // 64)]).tobytes()).hexdigest()
  key = hashlib.sha1(json.dumps([cfg.to_dict(), fp, train.features.shape, val.features.shape, train.ordered]).encode())
  return meta_train_head(train, val, cfg, os.path.join(cache_dir, f"head-{tag}-{key.hexdigest()[:12]}"),
                         progress=progress)
