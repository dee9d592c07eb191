"""Checks an ImageNet classifier on Tiny ImageNet's validation images.

Every Tiny ImageNet class is an ImageNet-1k class (a WordNet id, "wnid"), so a
network trained on ImageNet-1k classifies Tiny ImageNet images into its own
1000 classes without any training: top-1/top-5 far above chance (0.1% / 0.5%)
shows that its weights were loaded right; a wrong transposition, padding or
normalisation drops it to near chance.

The ImageNet-1k class order (the sorted 1000 wnids, as every torchvision, Keras
and TF checkpoint uses) is read from the label file that `tensorflow-datasets`
ships for its `imagenet2012` builder - no network access.
"""
from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image

from maml_jax.data.progress import progress as progress_bar
from maml_jax.errors import UserError


class CheckDataError(UserError):
  """The Tiny ImageNet zip or the ImageNet label list is missing or not of the expected form."""


# Where tensorflow-datasets keeps the 1000 ImageNet-1k wnids, newest layout first.
_TFDS_LABEL_FILES = (("datasets", "imagenet2012", "labels.txt"),
                     ("image_classification", "imagenet2012_labels.txt"))


def imagenet_wnids() -> tuple[str, ...]:
  """The 1000 ImageNet-1k wnids in class-index order (sorted), from tensorflow-datasets."""
  spec = importlib.util.find_spec("tensorflow_datasets")   # located, not imported (slow)
  roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
  for root in roots:
    for parts in _TFDS_LABEL_FILES:
      path = os.path.join(root, *parts)
      if os.path.isfile(path):
        with open(path) as f:
          wnids = tuple(line.strip() for line in f if line.strip())
        if len(wnids) != 1000 or len(set(wnids)) != 1000 or list(wnids) != sorted(wnids):
          raise CheckDataError(f"{path}: expected 1000 sorted distinct wnids, found {len(wnids)}")
        return wnids
  raise CheckDataError("ImageNet-1k label list not found: it ships with tensorflow-datasets "
                          f"(looked for {[os.path.join(*p) for p in _TFDS_LABEL_FILES]} under {roots})")


def read_val_images(zip_path: str, limit: Optional[int] = None) -> tuple[np.ndarray, list[str]]:
  """Tiny ImageNet validation images straight from the release zip.

  Args:
    zip_path: `tiny-imagenet-200.zip` (or a subset in the same layout).
    limit: the first `limit` images of `val/val_annotations.txt` (its order
      mixes the classes); all when None.
  Returns:
    images uint8 [N, 64, 64, 3] (grayscale ones replicated to RGB) and their N wnids.
  """
  if not os.path.isfile(zip_path):
    raise CheckDataError(f"no Tiny ImageNet zip at {zip_path}")
  with zipfile.ZipFile(zip_path) as zf:
    names = set(zf.namelist())
    ann = [n for n in names if n.endswith("val/val_annotations.txt")]
    if len(ann) != 1:
      raise CheckDataError(f"{zip_path}: expected one val/val_annotations.txt, found {len(ann)}")
    folder = ann[0][:-len("val_annotations.txt")] + "images/"
    rows = []
    for lineno, line in enumerate(zf.read(ann[0]).decode().splitlines(), 1):
      parts = line.split("\t")
      if len(parts) < 2:
        raise CheckDataError(f"{zip_path}:{ann[0]}:{lineno}: expected 'file<TAB>wnid ...', got {line!r}")
      if folder + parts[0] in names:
        rows.append((folder + parts[0], parts[1]))
    rows = rows[:limit] if limit is not None else rows
    if not rows:
      raise CheckDataError(f"{zip_path}: no validation images listed in {ann[0]} are in the zip")
    images = [np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n, _ in
              progress_bar(rows, desc="reading", unit="img", leave=False)]
  return np.stack(images), [w for _, w in rows]


class TopK(NamedTuple):
  top1: int
  top5: int
  total: int


def score(logits: np.ndarray, labels: np.ndarray) -> TopK:
  """Counts of rows whose label is the argmax / among the 5 largest logits."""
  top5 = np.argsort(-logits, axis=1)[:, :5]
  return TopK(int((top5[:, 0] == labels).sum()), int((top5 == labels[:, None]).any(1).sum()),
              len(labels))


def batched_apply(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 32,
                  desc: str = "classifying", progress: bool = True) -> np.ndarray:
  """Stacks fn(x) over `images` (uint8 [N, H, W, C]) fed as float [batch, H, W, C] in [0, 1].

  The last batch is zero-padded to full size (one compiled shape) and its
  padding rows dropped from the result.
  """
  out = []
  for i in progress_bar(range(0, len(images), batch), desc=desc, unit="batch", disable=not progress):
    x = images[i:i + batch].astype(np.float32) / 255.0
    n = len(x)
    if n < batch:
      x = np.concatenate([x, np.zeros((batch - n,) + x.shape[1:], np.float32)])
    out.append(np.asarray(fn(x))[:n])
  return np.concatenate(out)


def check_on_tinyimagenet(predict: Callable[[np.ndarray], np.ndarray], zip_path: str,
                          limit: Optional[int] = 400, batch: int = 32,
                          wnids: Optional[Sequence[str]] = None) -> TopK:
  """Top-1/top-5 of an ImageNet-1k classifier on Tiny ImageNet validation images."""
  wnids = list(wnids or imagenet_wnids())
  index = {w: i for i, w in enumerate(wnids)}
  images, val_wnids = read_val_images(zip_path, limit)
  missing = sorted(set(val_wnids) - set(index))
  if missing:
    raise CheckDataError(f"{zip_path}: classes not in ImageNet-1k: {missing[:5]}")
  labels = np.array([index[w] for w in val_wnids])
  return score(batched_apply(predict, images, batch), labels)
