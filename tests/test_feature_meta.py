"""The feature-head meta-training runs through the engine's loop and orbax checkpoints."""
import os

import jax
import numpy as np

from maml_jax.experiment import feature_meta, meta_runs
from maml_jax.experiment.backbones import NetSpec


def _features(classes, per_class, dim, seed):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim))
  x = np.concatenate([c + 0.3 * rng.normal(size=(per_class, dim)) for c in centres]).astype(np.float32)
  counts = np.full((classes,), per_class, np.int32)
  return feature_meta.FeatureSet(x, (np.cumsum(counts) - counts).astype(np.int32), counts)


def test_head_meta_training_uses_the_engine_and_is_read_back(tmp_path, monkeypatch):
  train, val = _features(8, 6, 16, 0), _features(5, 6, 16, 1)
  cfg = feature_meta.head_config("anil", steps=4, seed=0, ways=3).replace(
      shots=1, queries=2, eval_queries=2, tasks=2, val_every=2, val_episodes=4, checkpoint_every=2, log_every=2,
      inner_steps=1, eval_inner_steps=1, remat=False)
  params, info = feature_meta.load_or_train_head(train, val, cfg, str(tmp_path), "t", progress=False)
  (run,) = os.listdir(tmp_path)
  files = set(os.listdir(tmp_path / run))
  assert {"checkpoints", "best", "config.json", "metrics.jsonl", "results.json"} <= files   # the engine's run files
  assert info["best"]["step"] in (2, 4) and 0 <= info["best"]["val_accuracy"] <= 1

  import maml_jax.train as train_mod
  monkeypatch.setattr(train_mod, "train_and_evaluate", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
  again, info2 = feature_meta.load_or_train_head(train, val, cfg, str(tmp_path), "t", progress=False)
  assert info2["best"] == info["best"]
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))


def test_anil_means_one_layer_set_for_both_networks():
  scratch = meta_runs.scratch_config("anil", dataset="synthetic", data_dir="", split_seed=0,
                                     spec=NetSpec("scratch7", 1.0, 64, 1), seed=0, steps=1, overrides={})
  head = feature_meta.head_config("anil")
  assert scratch.inner_mask == head.inner_mask == "head/out"
  assert feature_meta.head_config("fomaml").first_order and not feature_meta.head_config("meta").first_order
