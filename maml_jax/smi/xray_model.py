"""The X-ray model: a head meta-learned on tasks of other patients' radiographs.

`python run.py meta-train --preset xray --data SHARDS` trains it with the
engine's one trainer (checkpoints, resume, best by validation, results.json):

* the shards' patients are split, seeded, into train / validation / test
  (`SHARES`); the split is saved as `<workdir>/patients.json` with the image
  and patient ids of each side and checked on every later run (a changed
  split, or a patient on two sides, is an error);
* every ROI crop is turned into EfficientNet-Lite0's frozen ImageNet features
  (1280-d) at `image_size` px, once (cached in the workdir);
* the classes of the tasks are bone-age bins (`BINS`, at the quantiles of the
  training patients' ages; the stages where the shards carry no ages), one
  example per ROI crop labelled with its radiograph's bin, so an N-way task
  asks to tell N neighbouring ages apart from a few crops each;
* the network is the `effnet_head` (the paper's 3x256 head on those
  features), meta-learned with second-order MAML on the head;
* after training, the supervised answer on the same training patients is fitted
  and kept beside it (`age_model.npz`, `maml_jax.smi.bone_age`): a ridge
  regression of bone age on an image's six ROIs' features.

The workdir is then what `adapt` (scored against the supervised answer, on the
user's own stages) and `experiment --xray-workdir` take.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import numpy as np

from maml_jax import data_sources
from maml_jax import io as files
from maml_jax.config import Config
from maml_jax.data.class_images import ClassImages
from maml_jax.errors import UserError
from maml_jax.smi import bone_age
from maml_jax.smi.errors import SMIDataError

SPLIT_FILE = "patients.json"
AGE_MODEL_FILE = "age_model.npz"
SHARES = (0.6, 0.2, 0.2)     # train / validation / test patients
BINS = 10
SIDES = ("train", "val", "test")


class LeakError(UserError):
  """A patient or radiograph on both sides of a train / score split."""


def patient_ids(data) -> np.ndarray:
  """str [N]: the patient of each image (the image id, or the row, where unknown)."""
  ids = data.image_id if data.image_id is not None else np.arange(data.num_images).astype(str)
  if data.patient_id is None:
    return np.asarray(ids).astype(str)
  pid = np.asarray(data.patient_id).astype(str)
  return np.where(pid == "", np.char.add("image:", np.asarray(ids).astype(str)), pid)


def image_ids(data) -> np.ndarray:
  return (data.image_id if data.image_id is not None else np.arange(data.num_images)).astype(str)


def split_patients(data, seed: int, shares=SHARES) -> dict:
  """{"seed", "shares", "<side>_rows" / "_patients" / "_images" for train, val
  and test}: a seeded patient-level split of the shards' images."""
  pid = patient_ids(data)
  patients = np.random.default_rng([seed, 20200]).permutation(np.unique(pid))
  cut = np.cumsum([int(round(s * len(patients))) for s in shares[:-1]])
  sides = dict(zip(SIDES, np.split(patients, cut)))
  ids = image_ids(data)
  out = {"seed": seed, "shares": list(shares), "num_patients": int(len(patients))}
  for side, chosen in sides.items():
    rows = np.flatnonzero(np.isin(pid, chosen))
    out.update({f"{side}_rows": rows.tolist(), f"{side}_patients": sorted(chosen.tolist()),
                f"{side}_images": sorted(ids[rows].tolist())})
  return out


def check_disjoint(a: tuple[str, dict, str], b: tuple[str, dict, str], what: str) -> None:
  """LeakError when two sides share a patient or an image.  Each side is
  (name, record, prefix) with the record's `<prefix>_patients/_images` lists."""
  for kind in ("patients", "images"):
    both = sorted(set(a[1][f"{a[2]}_{kind}"]) & set(b[1][f"{b[2]}_{kind}"]))
    if both:
      raise LeakError(f"{what}: {len(both)} {kind} are on both sides ({a[0]} and {b[0]}; e.g. {both[0]}); "
                      f"training on them would leak into the scores; remove them from one side")


def _digest(split: dict) -> str:
  return hashlib.sha1(json.dumps([split[f"{s}_images"] for s in SIDES]).encode()).hexdigest()[:12]


def save_or_check(workdir: str, split: dict) -> None:
  """Writes `<workdir>/patients.json`, or checks the saved one is this split."""
  for i, a in enumerate(SIDES):
    for b in SIDES[i + 1:]:
      check_disjoint((a, split, a), (b, split, b), "the patient split")
  path = os.path.join(workdir, SPLIT_FILE)
  if os.path.exists(path):
    saved = read_split(workdir)
    if _digest(saved) != _digest(split):
      raise LeakError(f"{path} holds another patient split (seed {saved.get('seed')}) than these shards give "
                      f"now (seed {split['seed']}): the shards or the seed changed; use a new --workdir")
    return
  os.makedirs(workdir, exist_ok=True)
  files.write_json(path, split)


def read_split(workdir: str) -> dict:
  path = os.path.join(workdir, SPLIT_FILE)
  if not os.path.isfile(path):
    raise SMIDataError(f"{workdir}: no {SPLIT_FILE}; not an X-ray model workdir (make one with "
                       f"`meta-train --preset xray --data SHARDS`)")
  with open(path) as f:
    return json.load(f)


def age_edges(ages: Optional[np.ndarray], bins: int) -> Optional[list]:
  """Bone-age bin edges (months) at the quantiles of `ages`; None without ages."""
  if ages is None or bins <= 0:
    return None
  return np.unique(np.quantile(np.asarray(ages, np.float64), np.linspace(0, 1, bins + 1)[1:-1])).tolist()


def bin_labels(data, rows: np.ndarray, edges: Optional[list]) -> tuple[np.ndarray, tuple]:
  """Class of each image at `rows` (bone-age bin, or stage when edges is None) and the class names."""
  if edges is None:
    return np.asarray(data.label)[rows], tuple(f"stage {c}" for c in data.classes)
  age = np.asarray(data.age_months, np.float64)[rows]
  bounds = ["0"] + [f"{e:g}" for e in edges] + ["max"]
  names = tuple(f"bone age {bounds[i]}-{bounds[i + 1]} months" for i in range(len(edges) + 1))
  return np.searchsorted(np.asarray(edges), age, side="right"), names


def crop_classes(data, image_rows: np.ndarray, edges: Optional[list]):
  """The crops of the images at `image_rows` grouped by class: (crop rows int64
  [n], class_start int32 [C], class_count int32 [C], class names)."""
  rois = len(data.roi_names)
  image_rows = np.asarray(image_rows, np.int64)
  lab, names = bin_labels(data, image_rows, edges)
  order = np.argsort(lab, kind="stable")
  image_rows, lab = image_rows[order], lab[order]
  crop_rows = (image_rows[:, None] * rois + np.arange(rois)[None]).reshape(-1)
  counts = np.bincount(lab, minlength=len(names)) * rois
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  return crop_rows, starts.astype(np.int32), counts.astype(np.int32), names


def crop_features(cfg: Config, data, cache_dir: str, progress: bool = True) -> np.ndarray:
  """float32 [N * R, 1280]: EfficientNet-Lite0 features of every ROI crop at
  `cfg.image_size` px (cached in `cache_dir`)."""
  from maml_jax.pretrained import frozen
  crops = data.rois.reshape((-1,) + data.rois.shape[2:] + (1,))
  return frozen.features(frozen.efficientnet(cfg.image_size), crops, cache_dir, "smi-crops", progress=progress)


def load_splits(cfg: Config, workdir: Optional[str]) -> dict[str, ClassImages]:
  """The trainer's {"train", "val", "test"} for `dataset="smi"`: feature rows of
  the ROI crops of each side's patients, grouped by bone-age bin (see the
  module docstring).  Saves or checks `<workdir>/patients.json`."""
  from maml_jax.smi import shards
  if not cfg.data_dir:
    raise UserError("the xray preset reads SMI shards: give --data SHARDS (a prepare-smi output folder)")
  data = shards.load_shards(cfg.data_dir)
  split = split_patients(data, cfg.split_seed)
  rois = len(data.roi_names)
  edges = age_edges(None if data.age_months is None else np.asarray(data.age_months)[split["train_rows"]], BINS)
  out = {}
  for side in SIDES:
    rows, start, count, names = crop_classes(data, np.asarray(split[f"{side}_rows"]), edges)
    need = cfg.shots + max(cfg.queries, cfg.eval_queries)
    thin = [n for n, c in zip(names, count) if c < need]
    if len(names) - len(thin) < cfg.ways:
      raise UserError(f"{cfg.data_dir}: the {side} patients ({len(split[f'{side}_patients'])}) leave "
                      f"{len(names) - len(thin)} classes with {need} crops ({cfg.shots} support + "
                      f"{max(cfg.queries, cfg.eval_queries)} queries) for {cfg.ways}-way tasks; more patients "
                      f"or fewer --shots/--queries")
    # A bin too thin for one task (ties in the ages, a small side) is left out of that side's tasks.
    keep = [i for i, c in enumerate(count) if c >= need]
    sel = np.concatenate([rows[start[i]:start[i] + count[i]] for i in keep])
    kept_count = count[keep].astype(np.int32)
    out[side] = (sel, np.concatenate([[0], np.cumsum(kept_count)[:-1]]).astype(np.int32), kept_count,
                 tuple(names[i] for i in keep))
  if workdir:
    save_or_check(workdir, {**split, "data": os.path.abspath(cfg.data_dir), "roi_names": list(data.roi_names),
                            "classes": list(data.classes), "label_scheme": data.label_scheme,
                            "bin_edges_months": edges, "rois_per_image": rois})
  feats = crop_features(cfg, data, os.path.join(workdir or cfg.data_dir, "cache"))
  # Bins and stages are ordered: tasks keep their order in the labels (`ClassImages.ordered`).
  return {side: ClassImages(feats[rows], start, count, names, synthetic=bool(data.synthetic), ordered=True)
          for side, (rows, start, count, names) in out.items()}


def fit_age_model(cfg: Config, workdir: str, progress: bool = True) -> bone_age.AgeModel:
  """The supervised answer on the training and validation patients (the labels
  meta-training used), saved as `<workdir>/age_model.npz`."""
  from maml_jax.smi import shards
  data = shards.load_shards(cfg.data_dir)
  split = read_split(workdir)
  rows = np.asarray(split["train_rows"] + split["val_rows"], np.int64)
  feats = crop_features(cfg, data, os.path.join(workdir, "cache"), progress)
  x = feats.reshape(data.num_images, -1)[rows]
  model = bone_age.fit_ridge(x, None if data.age_months is None else np.asarray(data.age_months)[rows],
                             where=f"{cfg.data_dir} (training patients)")
  boundaries, how = bone_age.stage_boundaries(data.label_scheme, data.num_classes,
                                              np.asarray(data.age_months)[rows], np.asarray(data.label)[rows])
  files.write_npz(os.path.join(workdir, AGE_MODEL_FILE), **model._asdict(),
                  boundaries=np.asarray(boundaries), boundaries_how=np.asarray(how))
  return model


def load_age_model(workdir: str) -> tuple[bone_age.AgeModel, list, str]:
  """(the saved age model, the training shards' stage boundaries, how found)."""
  path = os.path.join(workdir, AGE_MODEL_FILE)
  if not os.path.isfile(path):
    raise SMIDataError(f"{workdir}: no {AGE_MODEL_FILE} (the run has not finished; `meta-train --resume` "
                       f"completes it)")
  with np.load(path) as z:
    model = bone_age.AgeModel(*[z[k] if z[k].ndim else z[k].item() for k in bone_age.AgeModel._fields])
    return model, z["boundaries"].tolist(), str(z["boundaries_how"])


def target_boundaries(workdir: str, scored) -> tuple[Optional[list], str]:
  """The age boundaries (months) of `scored`'s stages for the no-support age
  column, and how they were found: the shards' own bone-age boundaries, or,
  for the stages the model was trained on, those estimated on its training
  patients; (None, why) otherwise."""
  if not os.path.isfile(os.path.join(workdir, AGE_MODEL_FILE)):
    return None, "the X-ray model has no supervised age model (its shards carry no ages)"
  b = scored.label_scheme.get("age_boundaries_months")
  if scored.label_scheme.get("kind") == "bone_age_stages" and isinstance(b, list) and len(b) == scored.num_classes - 1:
    return [float(v) for v in b], "the stages' own age boundaries"
  if list(read_split(workdir)["classes"]) == list(scored.classes):
    _, saved, how = load_age_model(workdir)
    return saved, f"{how}, on the X-ray model's training patients"
  return None, (f"the stages ({scored.label_scheme.get('name')!r}) are neither age ranges nor the stages the "
                f"X-ray model was trained on")


def register() -> None:
  """Makes `dataset="smi"` readable by the trainer (`maml_jax.data_sources`)."""
  data_sources.LOADERS["smi"] = load_splits
