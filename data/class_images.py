"""A class-indexed image set: the form every dataset reader returns.

An image set is stored flat, class after class, so that classes of different
sizes (Omniglot's 20 drawings, CIFAR-100's 600 images) share one array:

    images       uint8 [N, H, W, C]   (or float32 [N, D]: feature vectors of
                                      a frozen network, for the feature head)
    class_start  int32 [num_classes]   first row of each class in `images`
    class_count  int32 [num_classes]   rows of each class

`maml_jax.episodes` draws N-way K-shot episodes from it.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassImages:
  """A class-indexed image set (see the module docstring for the layout)."""
  images: np.ndarray          # uint8 [N, H, W, C] (may be a np.memmap), or float32 [N, D]
  class_start: np.ndarray     # int32 [num_classes]
  class_count: np.ndarray     # int32 [num_classes]
  class_names: tuple[str, ...] = ()
  synthetic: bool = False
  # int32 [num_classes] or None: a group id per class (Omniglot's alphabets);
  # when set, the episode sampler draws each episode's classes from one group.
  class_groups: np.ndarray | None = None
  # True when the classes are ordered (bone-age bins, maturity stages): each
  # episode then labels its drawn classes in their index order, so label k is
  # the k-th youngest, as stage k is at the target.
  ordered: bool = False

  def __post_init__(self):
    if not ((self.images.dtype == np.uint8 and self.images.ndim == 4)
            or (self.images.dtype == np.float32 and self.images.ndim == 2)):
      raise ValueError(f"images must be uint8 [N, H, W, C] or float32 features [N, D], got "
                       f"{self.images.dtype} {self.images.shape}")
    if len(self.class_start) != len(self.class_count):
      raise ValueError("class_start and class_count differ in length")
    if self.class_groups is not None and len(self.class_groups) != len(self.class_count):
      raise ValueError("class_groups and class_count differ in length")
    if len(self.class_count) and int(np.max(self.class_start + self.class_count)) > len(self.images):
      raise ValueError("a class runs past the end of `images`")

  @property
  def num_classes(self) -> int:
    return len(self.class_count)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.images.shape[1:])

  @classmethod
  def from_per_class(cls, per_class: Sequence[np.ndarray], names: Sequence[str] = (), synthetic=False):
    """Builds the flat layout from a list of `uint8 [n_c, H, W, C]` (or float32 [n_c, D]) arrays."""
    counts = np.array([len(a) for a in per_class], np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    rows = np.concatenate(per_class)
    rows = rows if rows.dtype == np.float32 else rows.astype(np.uint8)
    return cls(rows, starts, counts, tuple(names), synthetic)

  def subset(self, classes: Sequence[int]) -> "ClassImages":
    """The listed classes only, re-indexed 0..len(classes)-1 (copies their rows)."""
    classes = np.asarray(classes, np.int64)
    rows = [self.images[s:s + c] for s, c in zip(self.class_start[classes], self.class_count[classes])]
    names = tuple(self.class_names[i] for i in classes) if self.class_names else ()
    return ClassImages.from_per_class(rows, names, self.synthetic)
