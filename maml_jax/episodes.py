"""The N-way K-shot episode sampler over a class-indexed image set.

Image sets are `ClassImages` (`maml_jax.data.class_images`: uint8 images
stored class after class, as every dataset reader returns them).

Episode *i* of a sampler is a pure function of (seed, i): the indices are drawn
with `jax.random` from `fold_in(key(seed), i)`, so a resumed run, a host-side
gather from a memory-mapped cache and an on-device gather all see the same
episodes.  Arrays lead with the task axis: `[tasks, ways*shots, H, W, C]`,
class-major (the first `shots` rows are class 0 of the episode).

A set with `class_groups` (Omniglot's alphabets, `--within-alphabet`) has each
episode's classes drawn from one group: a group chosen uniformly among those
with at least `ways` classes, then `ways` distinct classes of it.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from maml_jax.data.class_images import ClassImages


class Episodes(NamedTuple):
  """A meta-batch of episodes; every array leads with the task axis."""
  support_x: jax.Array   # float32 [T, ways*shots, H, W, C] in [0, 1]
  support_y: jax.Array   # int32 [T, ways*shots]
  query_x: jax.Array     # float32 [T, ways*queries, H, W, C]
  query_y: jax.Array     # int32 [T, ways*queries]


class EpisodeIndices(NamedTuple):
  support: jax.Array     # int32 [T, ways*shots] rows of `images`
  query: jax.Array       # int32 [T, ways*queries]
  classes: jax.Array     # int32 [T, ways] the classes drawn, in label order


@functools.partial(jax.jit, static_argnames=("tasks", "ways", "shots", "queries", "max_count", "ordered"))
def episode_indices(key, class_start, class_count, *, tasks, ways, shots, queries, max_count, groups=None,
                    group_ok=None, ordered=False):
  """Draws the rows of `tasks` episodes.

  Per task: `ways` distinct classes in random order (so labels are shuffled per
  episode; with `ordered`, in their index order instead, so labels keep the
  classes' order), then `shots + queries` distinct images of each, the first
  `shots` for support and the rest for query (disjoint by construction).

  Args:
    key: a PRNG key; the caller derives it as `fold_in(key(seed), i)`.
    class_start, class_count: int32 [num_classes].
    max_count: static bound on `class_count` (the random keys are drawn at that
      width and masked, which keeps every class size on one compiled path).
    groups: optional int32 [num_classes], each class's group; with it,
      group_ok: float32 [num_groups], 1 where a group has >= `ways` classes.
      Each task's classes then come from one eligible group.
  Returns:
    EpisodeIndices.
  """
  num_classes = class_start.shape[0]

  def one(k):
    kc, ki = jax.random.split(k)
    if groups is None:
      classes = jax.random.choice(kc, num_classes, (ways,), replace=False)
    else:   # one eligible group, then `ways` distinct classes of it (zero weight elsewhere)
      kg, kc = jax.random.split(kc)
      g = jax.random.choice(kg, group_ok.shape[0], p=group_ok / group_ok.sum())
      member = (groups == g).astype(jnp.float32)
      classes = jax.random.choice(kc, num_classes, (ways,), replace=False, p=member / member.sum())
    if ordered:
      classes = jnp.sort(classes)
    u = jax.random.uniform(ki, (ways, max_count))
    u = jnp.where(jnp.arange(max_count)[None] < class_count[classes][:, None], u, 2.0)
    pick = jnp.argsort(u, axis=1)[:, :shots + queries]            # [ways, shots+queries]
    rows = class_start[classes][:, None] + pick
    return rows[:, :shots].reshape(-1), rows[:, shots:].reshape(-1), classes

  s, q, c = jax.vmap(one)(jax.random.split(key, tasks))
  return EpisodeIndices(s.astype(jnp.int32), q.astype(jnp.int32), c.astype(jnp.int32))


def episode_labels(tasks: int, ways: int, per_class: int) -> np.ndarray:
  """int32 [tasks, ways*per_class]: 0,0,..,1,1,.. matching the class-major rows."""
  return np.tile(np.repeat(np.arange(ways, dtype=np.int32), per_class), (tasks, 1))


class EpisodeSampler:
  """Draws meta-batches of episodes from a ClassImages, episode i from (seed, i).

  `on_device=True` copies the images to the accelerator once and gathers there
  (no host work per step); otherwise the rows are gathered on the host, which
  works with memory-mapped caches larger than device memory.  Both give the same
  episodes.
  """

  def __init__(self, data: ClassImages, *, tasks, ways, shots, queries, seed, on_device=True):
    short = np.flatnonzero(data.class_count < shots + queries)
    if len(short):
      c = int(short[0])
      name = data.class_names[c] if data.class_names else str(c)
      raise ValueError(f"class {name!r} has {int(data.class_count[c])} images; {shots}+{queries} "
                       f"(shots+queries) are needed ({len(short)} such classes)")
    if data.num_classes < ways:
      raise ValueError(f"{ways}-way episodes need {ways} classes; the set has {data.num_classes}")
    self._groups = self._group_ok = None
    if data.class_groups is not None:
      sizes = np.bincount(data.class_groups)
      if not (sizes >= ways).any():
        raise ValueError(f"{ways}-way episodes within one group (alphabet) need a group of {ways} classes; "
                         f"the largest has {int(sizes.max())}")
      self._groups = jnp.asarray(data.class_groups, jnp.int32)
      self._group_ok = jnp.asarray(sizes >= ways, jnp.float32)
    self.data, self.seed, self.on_device = data, seed, on_device
    self.shape = dict(tasks=tasks, ways=ways, shots=shots, queries=queries,
                      max_count=int(data.class_count.max()), ordered=bool(data.ordered))
    self._start = jnp.asarray(data.class_start)
    self._count = jnp.asarray(data.class_count)
    self._sy = jnp.asarray(episode_labels(tasks, ways, shots))
    self._qy = jnp.asarray(episode_labels(tasks, ways, queries))
    self._images = jnp.asarray(data.images) if on_device else None

  def indices(self, i: int) -> EpisodeIndices:
    key = jax.random.fold_in(jax.random.key(self.seed), i)
    return episode_indices(key, self._start, self._count, **self.shape, groups=self._groups,
                           group_ok=self._group_ok)

  def __call__(self, i: int) -> Episodes:
    idx = self.indices(i)
    if self.on_device:
      sx, qx = _gather(self._images, idx.support, idx.query)
    else:
      s, q = np.asarray(idx.support), np.asarray(idx.query)
      sx = jnp.asarray(self.data.images[s.reshape(-1)].reshape(s.shape + self.data.image_shape))
      qx = jnp.asarray(self.data.images[q.reshape(-1)].reshape(q.shape + self.data.image_shape))
      sx, qx = to_float(sx), to_float(qx)
    return Episodes(sx, self._sy, qx, self._qy)


@jax.jit
def to_float(x):
  """uint8 pixels -> float32 in [0, 1]; float32 feature vectors pass unchanged."""
  return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x


@jax.jit
def _gather(images, s, q):
  return to_float(images[s]), to_float(images[q])
