"""The test data of the experiment and the episodes every method shares.

Two sources, one shape:

* "metadataset" (Table 2): the meta-dataset's test classes (never seen in
  meta-training); an episode is `ways` random classes with `shots` support
  and `queries` query images each, drawn by the engine's `EpisodeSampler`
  (episode `repeat` of the sampler seeded with `seed`).
* "smi" (Tables 3, 4): the skeletal-maturity ROI crops, every class; a trial
  is drawn by `maml_jax.smi.trials.draw_trial(seed, repeat)` (disjoint by
  patient where patients are known).

Either way the draw for (shots, repeat) depends on (seed, shots, repeat) only
and is made once, before any method runs, so every method classifies exactly
the same queries from exactly the same support images.

Images are kept as crops, uint8 [N * R, 64, 64, 1] (R = 1 for the
meta-dataset, 6 ROIs per X-ray for SMI, image-major), so that every method
sees one array and an image's R crops are rows i*R .. i*R + R-1.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, NamedTuple

import numpy as np

from maml_jax.data.class_images import ClassImages
from maml_jax.episodes import EpisodeSampler, episode_labels


class Draw(NamedTuple):
  """One episode / trial, in image rows (class-major)."""
  support: np.ndarray     # int64 [n]
  support_y: np.ndarray   # int32 [n]
  query: np.ndarray       # int64 [m]
  query_y: np.ndarray     # int32 [m]

  def digest(self) -> str:
    """A short fingerprint of the rows and labels (the same draw, the same digest)."""
    h = hashlib.sha1()
    for a in self:
      h.update(np.ascontiguousarray(a, np.int64).tobytes())
      h.update(b"|")
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class TaskSource:
  """Test images and the episode draw.

  Attributes:
    name: "metadataset" or "smi".
    crops: uint8 [N * rois, H, W, 1] (image-major; may be a memmap).
    rois: crops per image.
    roi_names: their names (("image",) for the meta-dataset).
    ways: classes per episode.
    synthetic: generated data (labelled so in every output).
    description: one line for reports.
    draw: (shots, repeat) -> Draw.
    label_scheme: the SMI shards' label-scheme record ({} otherwise).
  """
  name: str
  crops: np.ndarray
  rois: int
  roi_names: tuple[str, ...]
  ways: int
  synthetic: bool
  description: str
  draw: Callable[[int, int], Draw]
  label_scheme: dict = dataclasses.field(default_factory=dict)

  @property
  def num_images(self) -> int:
    return len(self.crops) // self.rois

  def crop_rows(self, rows: np.ndarray) -> np.ndarray:
    """Image rows [n] -> their crops' rows [n * rois], image-major."""
    rows = np.asarray(rows, np.int64)
    return (rows[:, None] * self.rois + np.arange(self.rois)[None]).reshape(-1)


def metadataset_source(test: ClassImages, *, ways: int, queries: int, seed: int, description: str) -> TaskSource:
  """Episodes of the meta-dataset's test classes (64x64 grayscale, 1 crop per image)."""
  if test.images.ndim != 4 or test.images.shape[-1] != 1:
    raise ValueError(f"the meta-dataset test images must be grayscale [N, H, W, 1], got {test.images.shape}")
  samplers: dict[int, EpisodeSampler] = {}

  def draw(shots: int, repeat: int) -> Draw:
    if shots not in samplers:
      samplers[shots] = EpisodeSampler(test, tasks=1, ways=ways, shots=shots, queries=queries, seed=seed,
                                       on_device=False)
    idx = samplers[shots].indices(repeat)
    return Draw(np.asarray(idx.support[0], np.int64), episode_labels(1, ways, shots)[0],
                np.asarray(idx.query[0], np.int64), episode_labels(1, ways, queries)[0])

  return TaskSource("metadataset", test.images, 1, ("image",), ways, bool(test.synthetic), description, draw)


def describe_smi(data, where: str) -> str:
  """One line for reports: what was analysed (shards or demo data), its images, ROIs and classes."""
  counts = ", ".join(f"{c}: {n}" for c, n in zip(data.classes, data.counts().tolist()))
  ls = data.label_scheme
  scheme = ls.get("description") or ls.get("mapping") or ls.get("name") or ls.get("kind") or ""
  if ls.get("stage_ranges"):
    scheme += f" ({', '.join(ls['stage_ranges'])})"
  kind = "SYNTHETIC demo data" if data.synthetic else f"SMI shards {where}"
  return (f"{kind}: {data.num_images} images x {len(data.roi_names)} ROIs ({', '.join(data.roi_names)}); "
          f"classes{f' = {scheme}' if scheme else ''}, images per class {counts}")


def smi_source(data, *, queries: int, seed: int, where: str = "") -> TaskSource:
  """Trials of the SMI data (`maml_jax.smi.shards.SMIData`): all classes, all ROIs.

  `where` names the data in messages and reports (the shard folder)."""
  from maml_jax.smi import trials
  n, r = data.rois.shape[:2]
  where = where or ("the SYNTHETIC demo data" if data.synthetic else data.source or "SMI data")

  def draw(shots: int, repeat: int) -> Draw:
    t = trials.draw_trial(data.label, data.num_classes, shots, queries, seed=seed, trial=repeat,
                          patient_id=data.patient_id, where=where, classes=data.classes)
    return Draw(t.support.astype(np.int64), data.label[t.support].astype(np.int32),
                t.query.astype(np.int64), data.label[t.query].astype(np.int32))

  crops = data.rois.reshape((n * r,) + data.rois.shape[2:] + (1,))
  return TaskSource("smi", crops, r, tuple(data.roi_names), data.num_classes, bool(data.synthetic),
                    describe_smi(data, where), draw, dict(data.label_scheme))
