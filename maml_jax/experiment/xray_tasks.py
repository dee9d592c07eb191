"""Meta-training on similar-looking data: tasks of hand-radiograph crops.

The paper suggests meta-training on data that look like the target.  Here the
target is the SMI shards themselves, so the patients are split first:

* `split_patients`: a seeded share of the patients (`share`) is set aside for
  meta-training; every other patient is scored.  The split is saved as
  `<out>/xray-split.json` (patient and image ids of both sides) and checked
  on every later run (`save_or_check`); `check_disjoint` raises LeakError if a
  patient or image is on both sides.  Every column of the table, baseline or
  meta-learned, is scored on the same held-out patients only.
* `task_classes`: the meta-training side's images are cut into finer classes
  than the scored stages: `bins` bone-age bins at the quantiles of the
  meta-side ages (or the stages themselves when the shards carry no ages).
  An N-way task draws N of these bins, K crops of each as support and Q as
  queries (the engine's episode sampler), so the model meta-learns to tell
  neighbouring ages apart from few examples.  Each ROI crop is one example
  labelled with its image's bin, as in adaptation, where all crops of a
  support image carry its stage.  A share of the meta-side patients
  (`VAL_SHARE`) is kept apart again for meta-validation (model selection).

What this costs in labels: the meta-training side's bone ages (or stages) are
used; the scored side's labels are used only as the few-shot support labels,
as for every other column.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple, Optional

import numpy as np

from maml_jax.experiment.meta_runs import LeakError
from maml_jax.experiment.store import SettingsMismatchError
from maml_jax import io as files
from maml_jax.smi import xray_model
from maml_jax.smi.xray_model import patient_ids as _patients

SPLIT_FILE = "xray-split.json"
VAL_SHARE = 0.25     # of the meta-training patients, for meta-validation


def split_patients(data, share: float, seed: int) -> dict:
  """A seeded patient-level split: {"meta_rows", "scored_rows"} (int lists) and
  the ids behind them, plus the settings that made it."""
  if not 0 < share < 1:
    raise ValueError(f"the meta-training share of patients must be in (0, 1), got {share}")
  pid = _patients(data)
  patients = np.unique(pid)
  rng = np.random.default_rng([seed, 20180])
  chosen = set(rng.permutation(patients)[:int(round(share * len(patients)))].tolist())
  meta = np.array([p in chosen for p in pid])
  ids = (data.image_id if data.image_id is not None else np.arange(data.num_images)).astype(str)
  return {"seed": seed, "share": share, "num_patients": int(len(patients)),
          "meta_rows": np.flatnonzero(meta).tolist(), "scored_rows": np.flatnonzero(~meta).tolist(),
          "meta_patients": sorted(chosen), "scored_patients": sorted(set(pid[~meta].tolist())),
          "meta_images": sorted(ids[meta].tolist()), "scored_images": sorted(ids[~meta].tolist())}


def cross_split(train, scored, train_where: str, scored_where: str) -> dict:
  """A split across two pools: every image of `train` (shards from elsewhere:
  another site, a larger labelled pool) on the meta-training side, every image
  of `scored` on the scored side.  Same record as `split_patients` ("meta_rows"
  index `train`, "scored_rows" `scored`); LeakError when a patient or image id
  is in both pools; ValueError when the pools hold other ROIs or stages."""
  if tuple(train.roi_names) != tuple(scored.roi_names):
    raise ValueError(f"{train_where} holds the ROIs {list(train.roi_names)} but {scored_where} holds "
                     f"{list(scored.roi_names)}: a model trained on one set of ROIs cannot score the other")
  if tuple(train.classes) != tuple(scored.classes):
    raise ValueError(f"{train_where} has the stages {list(train.classes)} but {scored_where} has "
                     f"{list(scored.classes)}; make both with the same --age-boundaries (or stage scheme)")
  ids = lambda d: (d.image_id if d.image_id is not None else np.arange(d.num_images)).astype(str)
  split = {"train_pool": train_where, "scored_pool": scored_where, "num_patients": None,
           "meta_rows": list(range(train.num_images)), "scored_rows": list(range(scored.num_images)),
           "meta_patients": sorted(set(_patients(train).tolist())),
           "scored_patients": sorted(set(_patients(scored).tolist())),
           "meta_images": sorted(ids(train).tolist()), "scored_images": sorted(ids(scored).tolist())}
  split["num_patients"] = len(split["meta_patients"]) + len(split["scored_patients"])
  check_disjoint(split, f"{train_where} and {scored_where}")
  return split


def workdir_split(workdir: str, scored, scored_where: str) -> dict:
  """The split between an X-ray model's training patients (train and validation
  sides of `<workdir>/patients.json`) and every image of `scored`; LeakError
  when a patient or image is in both, ValueError for other ROIs or stages."""
  saved = xray_model.read_split(workdir)
  if list(saved["roi_names"]) != list(scored.roi_names):
    raise ValueError(f"the X-ray model in {workdir} was trained on the ROIs {saved['roi_names']}, but "
                     f"{scored_where} holds {list(scored.roi_names)}")
  ids = lambda d: (d.image_id if d.image_id is not None else np.arange(d.num_images)).astype(str)
  split = {"train_pool": f"{saved['data']} (the train and validation patients of {workdir})",
           "scored_pool": scored_where, "meta_rows": saved["train_rows"] + saved["val_rows"],
           "scored_rows": list(range(scored.num_images)),
           "meta_patients": sorted(saved["train_patients"] + saved["val_patients"]),
           "scored_patients": sorted(set(_patients(scored).tolist())),
           "meta_images": sorted(saved["train_images"] + saved["val_images"]), "scored_images": sorted(ids(scored).tolist())}
  split["num_patients"] = len(split["meta_patients"]) + len(split["scored_patients"])
  check_disjoint(split, f"the X-ray model's training patients ({workdir}) and {scored_where}")
  return split


def check_disjoint(split: dict, what: str = "the X-ray meta-training split") -> None:
  """LeakError if any patient or image is on both sides of the split."""
  for kind in ("patients", "images"):
    both = sorted(set(split[f"meta_{kind}"]) & set(split[f"scored_{kind}"]))
    if both:
      raise LeakError(f"{what} share {len(both)} {kind} (e.g. {both[0]}): training on them would leak "
                      f"into the scores; remove them from one side")


def digest(split: dict) -> str:
  return hashlib.sha1(json.dumps([split["meta_images"], split["scored_images"]]).encode()).hexdigest()[:12]


def save_or_check(out_dir: str, split: dict, write: bool = True) -> str:
  """Writes `<out>/xray-split.json` (with `write`), or checks it equals the saved one; returns its path."""
  check_disjoint(split)
  path = os.path.join(out_dir, SPLIT_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if digest(saved) != digest(split):
      raise SettingsMismatchError(f"{path} holds another patient split (seed {saved.get('seed')}, share "
                                  f"{saved.get('share')}, training pool {saved.get('train_pool')}); use the "
                                  f"same --seed/--xray-meta/--xray-train or another --out")
    return path
  if write:
    os.makedirs(out_dir, exist_ok=True)
    files.write_json(path, split)
  return path


class TaskClasses(NamedTuple):
  """Crops of one side grouped by class, as the engine's episode sampler wants them.

  rows: int64 [n] crop rows into the full source's crops, class-major;
  class_start / class_count: int32 [classes]; names: class names;
  edges: the bone-age bin edges (months), or None for stage classes.
  """
  rows: np.ndarray
  class_start: np.ndarray
  class_count: np.ndarray
  names: tuple
  edges: Optional[list]


def age_edges(data, rows: np.ndarray, bins: int) -> Optional[list]:
  """Bone-age bin edges (months) at the quantiles of the ages at `rows`; None
  when the shards carry no ages (the stages are the classes then)."""
  return xray_model.age_edges(None if data.age_months is None else np.asarray(data.age_months)[np.asarray(rows)],
                              bins)


def task_classes(data, image_rows: np.ndarray, rois: int, edges: Optional[list]) -> TaskClasses:
  """The crops of the images at `image_rows`, grouped by bone-age bin."""
  assert rois == len(data.roi_names)
  rows, start, count, names = xray_model.crop_classes(data, image_rows, edges)
  return TaskClasses(rows, start, count, names, edges)


def meta_sides(data, meta_rows, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The meta-training images split again by patient: (train rows, validation rows)."""
  meta_rows = np.asarray(meta_rows, np.int64)
  pid = _patients(data)[meta_rows]
  patients = np.unique(pid)
  rng = np.random.default_rng([seed, 20181])
  val = set(rng.permutation(patients)[:max(1, int(round(VAL_SHARE * len(patients))))].tolist())
  is_val = np.array([p in val for p in pid])
  return meta_rows[~is_val], meta_rows[is_val]
