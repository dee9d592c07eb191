"""The SMI shard format: NPZ shards of ROI crops plus a manifest.

A shard set is a folder:

    manifest.json
    shard-00000.npz, shard-00001.npz, ...

Each shard holds, for n images:

    rois        uint8 [n, R, 64, 64]   R ROI crops per image (R = 6 by default)
    label       int32 [n]              class index 0..C-1 into the label scheme
    age_months  float32 [n]            optional (NaN where unknown)
    sex         <U1 [n]                optional: "F", "M" or "" (unknown)
    image_id    <U [n]                 optional
    patient_id  <U [n]                 optional ("" where unknown)

`manifest.json` records the format version, whether the data are synthetic, the
ROI names and size, the label scheme (class names and how labels were made), the
total count per class, and per shard its file name, sha256, image count and
count per class.  The loader checks all of it and raises `SMIDataError` naming
the shard and the problem.  Shards and the manifest are written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np

from maml_jax import io as files
from maml_jax.smi.errors import SMIDataError
from maml_jax.smi.labels import class_counts

FORMAT = "maml_jax.smi_shards"
VERSION = 1
MANIFEST = "manifest.json"
ROI_SIZE = 64
DEFAULT_ROI_NAMES = ("roi1", "roi2", "roi3", "roi4", "roi5", "roi6")
OPTIONAL_FIELDS = ("age_months", "sex", "image_id", "patient_id")


@dataclasses.dataclass(frozen=True)
class SMIData:
  """A labelled set of ROI crops (all shards of a shard set, concatenated).

  Attributes:
    rois: uint8 [N, R, 64, 64].
    label: int32 [N] class indices into `classes`.
    classes: class names (e.g. "1".."5" for the merged SMI stages).
    roi_names: R names.
    synthetic: True for generated demo data.
    age_months, sex, image_id, patient_id: [N] or None.
    source: where the data came from (a folder, or a description).
    label_scheme: the manifest's label-scheme record.
  """
  rois: np.ndarray
  label: np.ndarray
  classes: tuple[str, ...]
  roi_names: tuple[str, ...]
  synthetic: bool
  age_months: Optional[np.ndarray] = None
  sex: Optional[np.ndarray] = None
  image_id: Optional[np.ndarray] = None
  patient_id: Optional[np.ndarray] = None
  source: str = ""
  label_scheme: dict = dataclasses.field(default_factory=dict)

  @property
  def num_images(self) -> int:
    return len(self.label)

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def counts(self) -> np.ndarray:
    return class_counts(self.label, self.num_classes)

  def take(self, rows: np.ndarray) -> "SMIData":
    """The listed images only (same classes and ROIs)."""
    opt = {k: (None if getattr(self, k) is None else getattr(self, k)[rows]) for k in OPTIONAL_FIELDS}
    return dataclasses.replace(self, rois=self.rois[rows], label=self.label[rows], **opt)


def validate_arrays(rois, label, num_classes: int, num_rois: int, *, where: str,
                    optional: Optional[dict] = None) -> None:
  """Checks shapes, dtypes and label range; raises SMIDataError naming `where`."""
  if not isinstance(rois, np.ndarray) or rois.dtype != np.uint8:
    raise SMIDataError(f"{where}: 'rois' must be uint8, got {getattr(rois, 'dtype', type(rois))}")
  if rois.ndim != 4 or rois.shape[1] != num_rois or rois.shape[2:] != (ROI_SIZE, ROI_SIZE):
    raise SMIDataError(f"{where}: 'rois' must have shape [n, {num_rois}, {ROI_SIZE}, {ROI_SIZE}], got {list(rois.shape)}")
  if not np.issubdtype(label.dtype, np.integer):
    raise SMIDataError(f"{where}: 'label' must be integer, got {label.dtype}")
  if label.shape != (len(rois),):
    raise SMIDataError(f"{where}: 'label' must have shape [{len(rois)}], got {list(label.shape)}")
  bad = np.flatnonzero((label < 0) | (label >= num_classes))
  if len(bad):
    raise SMIDataError(f"{where}: label {int(label[bad[0]])} (image {int(bad[0])}) is outside the scheme's "
                       f"{num_classes} classes 0..{num_classes - 1} ({len(bad)} such labels)")
  for k, v in (optional or {}).items():
    if v is not None and np.shape(v) != (len(rois),):
      raise SMIDataError(f"{where}: '{k}' must have shape [{len(rois)}], got {list(np.shape(v))}")


def write_shards(folder: str, data: SMIData, *, shard_size: int = 256, extra: Optional[dict] = None) -> dict:
  """Writes `data` as a shard set into `folder` (created if needed); returns the manifest.

  Shards are written first and the manifest last, each atomically, so a folder
  with a manifest always has every shard the manifest lists.  Callers that must
  not leave a partial folder behind write into `files.atomic_dir`.
  """
  opt = {k: getattr(data, k) for k in OPTIONAL_FIELDS}
  validate_arrays(data.rois, data.label, data.num_classes, len(data.roi_names), where=folder, optional=opt)
  os.makedirs(folder, exist_ok=True)
  shards = []
  for i, start in enumerate(range(0, max(data.num_images, 1), shard_size)):
    rows = slice(start, start + shard_size)
    arrays = {"rois": data.rois[rows], "label": data.label[rows].astype(np.int32)}
    for k, v in opt.items():
      if v is not None:
        arrays[k] = np.asarray(v[rows], np.float32 if k == "age_months" else str)
    name = f"shard-{i:05d}.npz"
    path = os.path.join(folder, name)
    files.write_npz(path, **arrays)
    shards.append({"file": name, "sha256": files.sha256_file(path), "num_images": int(len(arrays["label"])),
                   "counts": class_counts(arrays["label"], data.num_classes).tolist()})
  manifest = {
      "format": FORMAT, "version": VERSION, "synthetic": bool(data.synthetic),
      "source": data.source, "roi_names": list(data.roi_names), "roi_size": ROI_SIZE,
      "label_scheme": {**data.label_scheme, "classes": list(data.classes)},
      "num_images": data.num_images, "counts": data.counts().tolist(),
      "fields": ["rois", "label"] + [k for k, v in opt.items() if v is not None],
      "shards": shards, **(extra or {})}
  files.write_json(os.path.join(folder, MANIFEST), manifest)
  return manifest


def read_manifest(folder: str) -> dict:
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    raise SMIDataError(f"{path}: no manifest; is {folder} a shard folder made by `prepare-smi`?")
  try:
    with open(path) as f:
      m = json.load(f)
  except (OSError, ValueError) as e:
    raise SMIDataError(f"{path}: cannot read the manifest ({e})") from None
  if not isinstance(m, dict):
    raise SMIDataError(f"{path}: the manifest must be a JSON object, got a {type(m).__name__}")
  for key in ("format", "roi_names", "label_scheme", "counts", "shards"):
    if key not in m:
      raise SMIDataError(f"{path}: the manifest lacks '{key}'")
  if m["format"] != FORMAT or m.get("version") != VERSION:
    raise SMIDataError(f"{path}: format {m['format']!r} version {m.get('version')} is not "
                       f"{FORMAT!r} version {VERSION}")
  if not isinstance(m["label_scheme"], dict) or not _str_list(m["label_scheme"].get("classes")):
    raise SMIDataError(f"{path}: the manifest's label_scheme needs 'classes', a list of names")
  if not _str_list(m["roi_names"]) or not m["roi_names"]:
    raise SMIDataError(f"{path}: 'roi_names' must be a non-empty list of names")
  if not _int_list(m["counts"], len(m["label_scheme"]["classes"])):
    raise SMIDataError(f"{path}: 'counts' must be one whole number per class")
  if not isinstance(m["shards"], list):
    raise SMIDataError(f"{path}: 'shards' must be a list of shard entries")
  for i, e in enumerate(m["shards"]):
    _check_entry(e, i, folder, path, len(m["label_scheme"]["classes"]))
  return m


def _str_list(v) -> bool:
  return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _int_list(v, n: int) -> bool:
  return isinstance(v, list) and len(v) == n and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _check_entry(e, i: int, folder: str, path: str, num_classes: int) -> None:
  """A manifest's shard entry: a plain file name inside `folder`, a sha256, counts."""
  if not isinstance(e, dict):
    raise SMIDataError(f"{path}: shard entry {i} must be an object, got {e!r:.60}")
  name = e.get("file")
  if not isinstance(name, str) or not name:
    raise SMIDataError(f"{path}: shard entry {i} needs a 'file' name")
  # Only names inside the folder: no separators, no '..', nothing absolute, no link out.
  inside = os.path.realpath(os.path.join(folder, name))
  if (os.path.basename(name) != name or name in (".", "..") or os.path.isabs(name)
      or os.path.dirname(inside) != os.path.realpath(folder)):
    raise SMIDataError(f"{path}: shard entry {i} names {name!r}, which is not a file inside {folder}")
  if not isinstance(e.get("sha256"), str):
    raise SMIDataError(f"{path}: shard entry {i} ({name}) needs a 'sha256' string")
  if not isinstance(e.get("num_images"), int) or isinstance(e.get("num_images"), bool) or e["num_images"] < 0:
    raise SMIDataError(f"{path}: shard entry {i} ({name}) needs 'num_images', a whole number >= 0")
  if not _int_list(e.get("counts"), num_classes):
    raise SMIDataError(f"{path}: shard entry {i} ({name}) needs 'counts', one whole number per class")


def _read_shard(path: str, entry: dict, verify: bool) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise SMIDataError(f"{path}: shard listed in the manifest is missing")
  digest = files.sha256_file(path) if verify else entry.get("sha256")
  if digest != entry.get("sha256"):
    raise SMIDataError(f"{path}: sha256 {digest[:16]}... does not match the manifest's "
                       f"{str(entry.get('sha256'))[:16]}... (the shard is corrupt or was changed)")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except Exception as e:   # numpy and zipfile raise many types for a damaged file
    raise SMIDataError(f"{path}: cannot read the shard ({type(e).__name__}: {e})") from None


def load_shards(folder: str, *, verify: bool = True) -> SMIData:
  """Loads and validates a shard set.

  Checks: manifest format; each shard's sha256 (when `verify`), presence,
  dtypes and shapes; labels inside the scheme; per-shard and total counts per
  class against the manifest.  Raises SMIDataError naming the file at fault.
  """
  m = read_manifest(folder)
  classes = tuple(m["label_scheme"]["classes"])
  roi_names = tuple(m["roi_names"])
  mpath = os.path.join(folder, MANIFEST)
  if not m["shards"]:
    raise SMIDataError(f"{mpath}: the manifest lists no shards")
  parts: dict[str, list] = {}
  for entry in m["shards"]:
    path = os.path.join(folder, entry["file"])
    z = _read_shard(path, entry, verify)
    for k in ("rois", "label"):
      if k not in z:
        raise SMIDataError(f"{path}: the shard lacks the '{k}' array")
    opt = {k: z.get(k) for k in OPTIONAL_FIELDS}
    validate_arrays(z["rois"], z["label"], len(classes), len(roi_names), where=path, optional=opt)
    n = len(z["label"])
    if n != entry.get("num_images"):
      raise SMIDataError(f"{path}: holds {n} images, the manifest says {entry.get('num_images')}")
    got = class_counts(z["label"], len(classes)).tolist()
    if got != list(entry.get("counts", [])):
      raise SMIDataError(f"{path}: counts per class {got} do not match the manifest's {entry.get('counts')}")
    for k, v in z.items():
      parts.setdefault(k, []).append(v)
  missing = [k for k, v in parts.items() if len(v) != len(m["shards"])]
  if missing:
    raise SMIDataError(f"{folder}: field(s) {missing} are present in some shards only")
  cat = {k: np.concatenate(v) for k, v in parts.items()}
  label = cat["label"].astype(np.int32)
  total = class_counts(label, len(classes)).tolist()
  if total != list(m["counts"]):
    raise SMIDataError(f"{mpath}: counts per class {m['counts']} do not match the shards' {total}")
  return SMIData(rois=cat["rois"], label=label, classes=classes, roi_names=roi_names,
                 synthetic=bool(m.get("synthetic", False)),
                 age_months=cat.get("age_months"), sex=cat.get("sex"), image_id=cat.get("image_id"),
                 patient_id=cat.get("patient_id"), source=str(m.get("source") or os.path.abspath(folder)),
                 label_scheme=dict(m["label_scheme"]))


def describe(data: SMIData) -> str:
  """One line: images, ROIs, counts per class, synthetic or not."""
  counts = ", ".join(f"{c}: {n}" for c, n in zip(data.classes, data.counts().tolist()))
  tag = "SYNTHETIC demo data" if data.synthetic else "data"
  return f"{tag}: {data.num_images} images x {len(data.roi_names)} ROIs; per class {counts}"

