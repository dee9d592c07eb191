"""Meta-train / validation / test class sets for a configuration.

`load_splits(cfg, workdir)` dispatches on `cfg.dataset`:
- "omniglot": the standard split of `data/omniglot` (see `data.omniglot`), or
  Lake's background/evaluation split (`split="lake"`); with `within_alphabet`
  the classes carry their alphabet, so episodes are drawn within one;
- "synthetic": a small generated set of labelled-synthetic classes (tests,
  benchmarks, demos), made on the fly from `cfg.seed`;
- a '+'-joined subset of cifar100, tinyimagenet, omniglot, folder: the
  paper's combined meta-dataset (`data.metadataset`), split by class and
  cached as uint8 under the workdir.
"""
from __future__ import annotations

import numpy as np

from maml_jax.config import Config
from maml_jax.errors import UserError
from maml_jax.data.class_images import ClassImages


def synthetic_classes(num_classes: int, per_class: int, size: int, channels: int, seed: int) -> ClassImages:
  """SYNTHETIC classes: each a random smooth prototype plus per-image noise and
  shifts, so that few-shot learning on them is possible but not trivial."""
  rng = np.random.default_rng(seed)
  proto = rng.normal(size=(num_classes, size // 4 + 1, size // 4 + 1, channels))
  proto = np.kron(proto, np.ones((1, 4, 4, 1)))[:, :size, :size]
  imgs = []
  for c in range(num_classes):
    shift = rng.integers(-2, 3, size=(per_class, 2))
    x = np.stack([np.roll(proto[c], tuple(s), axis=(0, 1)) for s in shift])
    x = x + rng.normal(scale=0.8, size=x.shape)
    imgs.append(np.clip(128 + 40 * x, 0, 255).astype(np.uint8))
  return ClassImages.from_per_class(imgs, [f"synthetic-{c}" for c in range(num_classes)], synthetic=True)


def _omniglot(cfg: Config, workdir: str | None) -> dict[str, ClassImages]:
  from maml_jax.data.omniglot import lake_split, load_omniglot, standard_split, with_alphabets
  if cfg.channels != 1:
    raise UserError("Omniglot is grayscale: use --channels 1")
  split = lake_split if cfg.split == "lake" else standard_split
  splits = split(load_omniglot(cfg.data_dir or None, cfg.image_size), seed=cfg.split_seed)
  if cfg.within_alphabet:
    splits = {k: with_alphabets(v) for k, v in splits.items()}
  return splits


def _synthetic(cfg: Config, workdir: str | None) -> dict[str, ClassImages]:
  n = max(3 * cfg.ways, 12)
  per = max(cfg.shots + max(cfg.queries, cfg.eval_queries), 20)
  return {name: synthetic_classes(n, per, cfg.image_size, cfg.channels, cfg.split_seed * 7 + i)
          for i, name in enumerate(("train", "val", "test"))}


def _meta_dataset(cfg: Config, workdir: str | None) -> dict[str, ClassImages]:
  from maml_jax.data import metadataset
  names = cfg.dataset.split("+")
  return metadataset.load_meta_dataset(
      names, image_size=cfg.image_size, channels=cfg.channels, workdir=workdir, split_seed=cfg.split_seed,
      tfds_data_dir=cfg.data_dir or None, manual_dir=cfg.manual_dir or None,
      image_folder=cfg.image_folder or None)


# dataset name -> (config, workdir) -> splits; any other name is a '+'-joined
# subset of the meta-dataset's sources (its reader checks the names).
LOADERS = {"omniglot": _omniglot, "synthetic": _synthetic}


def load_splits(cfg: Config, workdir: str | None = None) -> dict[str, ClassImages]:
  """{"train", "val", "test"}: ClassImages for the configuration's dataset."""
  return LOADERS.get(cfg.dataset, _meta_dataset)(cfg, workdir)
