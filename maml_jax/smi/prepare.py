"""Building a shard set from a user's X-rays, label CSV and ROI-centre CSV.

Inputs (all CSVs have a header row; extra columns are ignored):

- labels CSV: `image_id` plus either `stage` (1..11 with the paper's merge, or
  already 1..5, or any stages with a user mapping) or an age column
  (`age_months` or `boneage_months`), which gives bone-age stages: at given
  boundaries, or, when there is no stage column, at the data's quintiles.
  Optional columns `patient_id` (else `rsna_id`), `sex` (F/M).
  `image_id` is the image's file name without extension.
- ROI centres, one of
  * long CSV  `image_id, roi, x, y`  (one row per image and ROI),
  * wide CSV  `image_id, roi1_x, roi1_y, roi2_x, roi2_y, ...`,
  * template CSV `roi, x, y` (no image_id): the same centres for every image,
    for registered images.
  x is the column and y the row, in pixels of the original image (or of the
  512x512 resized image with `coords="resized"`).  ROIs are named as in the
  CSV (a number n becomes "roi<n>"), in order of first appearance; an
  optional `name` column (long or template form) names them instead.

Everything is read and checked before anything is written, so bad input
leaves no output behind.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from maml_jax.data.progress import progress as progress_bar
from maml_jax.smi import images as imio
from maml_jax import io as files
from maml_jax.smi import labels as lab
from maml_jax.smi import localize as loc
from maml_jax.smi.errors import SMIDataError
from maml_jax.smi.shards import SMIData


def read_csv(path: str) -> list[dict[str, str]]:
  """Rows as dicts with stripped, lower-case keys and stripped values."""
  if not os.path.isfile(path):
    raise SMIDataError(f"{path}: no such CSV file")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      if not reader.fieldnames:
        raise SMIDataError(f"{path}: the CSV is empty (a header row is needed)")
      rows = []
      for row in reader:
        if None in row:   # DictReader files the fields beyond the header under None
          raise SMIDataError(f"{path}: row {reader.line_num} has {len(reader.fieldnames) + len(row[None])} "
                             f"fields, the header has {len(reader.fieldnames)}")
        rows.append({(k or "").strip().lower(): (v or "").strip() for k, v in row.items()})
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise SMIDataError(f"{path}: cannot read the CSV ({e})") from None
  if not rows:
    raise SMIDataError(f"{path}: the CSV has a header but no rows")
  return rows


def _number(text: str, *, path: str, row: int, column: str) -> float:
  try:
    v = float(text)
  except ValueError:
    raise SMIDataError(f"{path}: row {row + 2}, column '{column}': {text!r} is not a number") from None
  if not np.isfinite(v):
    raise SMIDataError(f"{path}: row {row + 2}, column '{column}': {text!r} is not a finite number")
  return v


def _roi_name(text: str) -> str:
  return f"roi{int(float(text))}" if text.replace(".", "", 1).isdigit() else text


@dataclasses.dataclass(frozen=True)
class LabelTable:
  """Labels read from a labels CSV, in the CSV's row order."""
  image_id: list[str]
  label: np.ndarray                    # int32 [n] class index 0..C-1
  classes: tuple[str, ...]
  scheme: dict
  patient_id: Optional[np.ndarray]
  sex: Optional[np.ndarray]
  age_months: Optional[np.ndarray]


AGE_COLUMNS = ("age_months", "boneage_months")
PATIENT_COLUMNS = ("patient_id", "rsna_id")


def read_labels(path: str, *, stages: str = "11", mapping: Optional[str] = None,
                age_boundaries: Optional[Sequence[float]] = None, column: str = "stage",
                age_stages: int = 5) -> LabelTable:
  """Reads a labels CSV and applies the label scheme.

  Args:
    stages: "11" (merge 1..11 into 5 as the paper does) or "5" (already 1..5);
      ignored when `mapping` or `age_boundaries` is given.
    mapping: a user mapping such as "1,2:1;3,4:2;..." (see labels.parse_mapping).
    age_boundaries: ages in months where stage 2, 3, ... begin; labels then come
      from the age column (`age_months`, else `boneage_months`).
    column: the stage column's name.  When it is absent and an age column is
      present, labels are `age_stages` bone-age stages at the ages' quantiles.
  """
  rows = read_csv(path)
  cols = set(rows[0])
  if "image_id" not in cols:
    raise SMIDataError(f"{path}: the labels CSV needs an 'image_id' column (has {sorted(cols)})")
  ids = [r["image_id"] for r in rows]
  dup = sorted(i for i, k in collections.Counter(ids).items() if k > 1)
  if dup:
    raise SMIDataError(f"{path}: image_id {dup[0]!r} appears more than once")
  age = None
  age_col = next((c for c in AGE_COLUMNS if c in cols), None)
  if age_col:
    age = np.array([_number(r[age_col], path=path, row=i, column=age_col) if r[age_col] else np.nan
                    for i, r in enumerate(rows)], np.float32)
  column = column.lower()
  if age_boundaries is None and column not in cols and not mapping and age is not None:
    if np.isnan(age).any():
      raise SMIDataError(f"{path}: row {int(np.flatnonzero(np.isnan(age))[0]) + 2} has no '{age_col}' value "
                         "(bone-age stages need an age on every row)")
    age_boundaries = lab.quantile_boundaries(age, age_stages)
    how = f"the labelled ages' {age_stages}-quantiles, rounded to whole months"
  else:
    how = "boundaries given with --age-boundaries"
  if age_boundaries is not None:
    if age is None or np.isnan(age).any():
      raise SMIDataError(f"{path}: labels from ages need an age ('age_months' or 'boneage_months') on every row")
    merged = lab.stages_from_age(age, age_boundaries)
    scheme = lab.bone_age_scheme(age_boundaries, how)
    num = len(age_boundaries) + 1
  else:
    if column not in cols:
      raise SMIDataError(f"{path}: the labels CSV needs a '{column}' column, or an age column "
                         f"({' or '.join(AGE_COLUMNS)}) for bone-age stages (has {sorted(cols)})")
    raw = []
    for i, r in enumerate(rows):
      v = _number(r[column], path=path, row=i, column=column)
      if v != int(v):
        raise SMIDataError(f"{path}: row {i + 2}, column '{column}': stage {r[column]!r} is not a whole number")
      raw.append(int(v))
    if mapping:
      m = lab.parse_mapping(mapping)
      scheme = {"source": "stage", "mapping": {str(k): v for k, v in sorted(m.items())}}
    elif stages == "11":
      m = lab.PAPER_MERGE
      scheme = {"source": "stage", "mapping": "paper 11-to-5: {1,2}->1, {3,4}->2, {5,6}->3, {7,8,9}->4, {10,11}->5"}
    elif stages == "5":
      m = {s: s for s in range(1, 6)}
      scheme = {"source": "stage", "mapping": "identity (stages already 1..5)"}
    else:
      raise SMIDataError(f"stages must be '11' or '5', got {stages!r}")
    merged = lab.merge_stages(np.array(raw), m, where=path)
    num = max(m.values())
  classes = tuple(str(c) for c in range(1, num + 1))
  sex = None
  if "sex" in cols:
    sex = np.array([r["sex"][:1].upper() for r in rows], "<U1")
    bad = [s for s in sex.tolist() if s not in ("F", "M", "")]
    if bad:
      raise SMIDataError(f"{path}: sex must be F or M (or empty), got {bad[0]!r}")
  pid_col = next((c for c in PATIENT_COLUMNS if c in cols), None)
  pid = np.array([r[pid_col] for r in rows]) if pid_col else None
  return LabelTable(ids, (merged - 1).astype(np.int32), classes, scheme, pid, sex, age)


def read_centres(path: str) -> tuple[Optional[dict[str, np.ndarray]], tuple[str, ...], Optional[np.ndarray]]:
  """Reads ROI centres in long, wide or template form.

  Returns:
    (per_image, roi_names, template): per_image maps image_id to float [R, 2]
    (x, y) with NaN where a ROI is missing, or is None for a template, which is
    then float [R, 2].
  """
  rows = read_csv(path)
  cols = list(rows[0])
  if {"roi", "x", "y"} <= set(cols):
    if "name" in cols:  # a `name` column names the ROIs (one name per roi)
      named: dict[str, str] = {}
      for i, r in enumerate(rows):
        if r["name"] and named.setdefault(r["roi"], r["name"]) != r["name"]:
          raise SMIDataError(f"{path}: row {i + 2}: roi {r['roi']!r} is named both {named[r['roi']]!r} "
                             f"and {r['name']!r}")
      rows = [{**r, "roi": named.get(r["roi"]) or r["roi"]} for r in rows]
    names: list[str] = []
    for r in rows:
      if _roi_name(r["roi"]) not in names:
        names.append(_roi_name(r["roi"]))
    idx = {n: i for i, n in enumerate(names)}
    if "image_id" not in cols:  # template
      tmpl = np.full((len(names), 2), np.nan)
      for i, r in enumerate(rows):
        tmpl[idx[_roi_name(r["roi"])]] = [_number(r["x"], path=path, row=i, column="x"),
                                          _number(r["y"], path=path, row=i, column="y")]
      return None, tuple(names), tmpl
    out: dict[str, np.ndarray] = {}
    for i, r in enumerate(rows):
      c = out.setdefault(r["image_id"], np.full((len(names), 2), np.nan))
      j = idx[_roi_name(r["roi"])]
      if np.isfinite(c[j]).all():
        raise SMIDataError(f"{path}: row {i + 2}: image {r['image_id']!r} has ROI {names[j]} twice")
      c[j] = [_number(r["x"], path=path, row=i, column="x"), _number(r["y"], path=path, row=i, column="y")]
    return out, tuple(names), None
  xs = [c for c in cols if c.endswith("_x") and c[:-2] + "_y" in cols]
  if "image_id" in cols and xs:
    names = tuple(_roi_name(c[:-2]) for c in xs)
    out = {}
    for i, r in enumerate(rows):
      if r["image_id"] in out:
        raise SMIDataError(f"{path}: row {i + 2}: image {r['image_id']!r} appears twice")
      out[r["image_id"]] = np.array([[_number(r[c], path=path, row=i, column=c) if r[c] else np.nan,
                                      _number(r[c[:-2] + "_y"], path=path, row=i, column=c[:-2] + "_y")
                                      if r[c[:-2] + "_y"] else np.nan] for c in xs])
    return out, names, None
  raise SMIDataError(f"{path}: expected ROI columns 'image_id,roi,x,y' (long), 'image_id,<roi>_x,<roi>_y,...' "
                     f"(wide) or 'roi,x,y' (template); found {cols}")


@dataclasses.dataclass(frozen=True)
class PrepareSummary:
  """What `build` did.  `found` rows: (image_id, roi, x, y, x512, y512, note) for every
  located ROI; `excluded` rows: (image_id, file, roi, reason)."""
  num_images: int
  counts: list[int]
  classes: tuple[str, ...]
  skipped_unlabelled: list[str]
  excluded: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)
  found: list[tuple] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)


ROI_MODES = ("auto", "whole")


def _cut(path: str, rois: str, centres, coords: str, roi_names,
         hand: str = "auto") -> tuple[np.ndarray, Optional[object]]:
  """uint8 [R, 64, 64] crops of one image, and the localisation result (None for a ROI file)."""
  if rois == "whole":
    image = imio.read_gray(path, min_size=imio.MIN_SIZE)
    crop, found = loc.whole_hand(image, where=path, hand=hand)
    return crop[None], found
  if rois == "auto":
    image = imio.read_gray(path, min_size=imio.MIN_SIZE)
    found = loc.locate(image, where=path, hand=hand)
    fit = imio.square_fit(image.shape)
    return imio.crop_rois(imio.resize(image), fit.to_square(found.centres), where=path,
                          roi_names=found.roi_names), found
  return imio.rois_from_file(path, centres, coords=coords, roi_names=roi_names), None


def build(images_dir: str, labels_csv: str, rois: str = "auto", *, coords: str = "original",
          stages: str = "11", mapping: Optional[str] = None, age_boundaries: Optional[Sequence[float]] = None,
          label_column: str = "stage", on_failure: str = "error", progress: bool = True,
          age_stages: int = 5, hand: str = "auto") -> tuple[SMIData, PrepareSummary]:
  """Reads everything and returns the data set (nothing is written).

  Args:
    rois: "auto" (find the six joints in each image, `localize.JOINT_ROIS`),
      "whole" (one normalised whole-hand view) or a ROI-centre CSV (which wins
      over any localisation).
    hand: "auto", "left" or "right" (see `localize.locate`).
    on_failure: "error" stops at the first image that cannot be read or whose
      hand or joints cannot be found; "skip" leaves such images out and lists
      them in the summary's `excluded`.
  """
  if on_failure not in ("error", "skip"):
    raise SMIDataError(f"--on-failure must be 'error' or 'skip', got {on_failure!r}")
  paths = imio.list_images(images_dir)
  table = read_labels(labels_csv, stages=stages, mapping=mapping, age_boundaries=age_boundaries,
                      column=label_column, age_stages=age_stages)
  per_image, template = None, None
  if rois in ROI_MODES:
    roi_names = loc.JOINT_ROIS if rois == "auto" else loc.WHOLE_ROIS
  else:
    per_image, roi_names, template = read_centres(rois)
  excluded: list[tuple[str, str, str, str]] = []
  missing = [i for i in table.image_id if i not in paths]
  if missing and on_failure == "error":
    raise SMIDataError(f"{labels_csv}: image {missing[0]!r} has a label but no image file in {images_dir} "
                       f"({len(missing)} such labels; --on-failure skip leaves them out)")
  excluded += [(i, "", "", f"has a label row in {os.path.basename(labels_csv)} but no image file") for i in missing]
  if per_image is not None:
    nocentre = [i for i in table.image_id if i not in per_image and i in paths]
    if nocentre:
      raise SMIDataError(f"{rois}: image {nocentre[0]!r} has no ROI centres ({len(nocentre)} such images)")
  labelled = set(table.image_id)
  skipped = [i for i in paths if i not in labelled]
  keep, crops, found_rows, notes = [], [], [], []
  todo = [n for n, i in enumerate(table.image_id) if i in paths]
  for n in progress_bar(todo, desc="locating and cropping ROIs" if rois in ROI_MODES else "cropping ROIs",
                         unit="image", disable=not progress):
    image_id = table.image_id[n]
    centres = None if rois in ROI_MODES else (template if per_image is None else per_image[image_id])
    try:
      crop, found = _cut(paths[image_id], rois, centres, coords, roi_names, hand)
    except SMIDataError as e:
      if on_failure == "error":
        raise
      excluded.append((image_id, paths[image_id], getattr(e, "roi", ""), getattr(e, "reason", str(e))))
      continue
    keep.append(n)
    crops.append(crop)
    if found is not None:
      found_rows += found.rows(image_id)
      if found.note:
        notes.append(f"{image_id}: {found.note}")
  if not keep:
    raise SMIDataError(f"{images_dir}: no image could be used ({len(excluded)} excluded, e.g. "
                       f"{excluded[0][0] if excluded else '-'}: {excluded[0][3] if excluded else '-'})")
  rows = np.array(keep)
  label = table.label[rows]
  counts = lab.class_counts(label, len(table.classes))
  pick = lambda a: None if a is None else a[rows]  # noqa: E731
  data = SMIData(rois=np.stack(crops).astype(np.uint8), label=label, classes=table.classes, roi_names=tuple(roi_names),
                 synthetic=False, age_months=pick(table.age_months), sex=pick(table.sex),
                 image_id=np.array(table.image_id)[rows], patient_id=pick(table.patient_id),
                 source=os.path.abspath(images_dir),
                 label_scheme={"name": f"smi{len(table.classes)}", **table.scheme})
  return data, PrepareSummary(len(rows), counts.tolist(), table.classes, skipped, excluded, found_rows, notes)


def write_side_tables(folder: str, summary: PrepareSummary) -> None:
  """`rois_found.csv` (image_id, roi, x, y in original pixels, note) when ROIs were located,
  and `excluded.csv` (image_id, file, roi, reason), written atomically into `folder`."""
  import io
  if summary.found:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image_id", "roi", "x", "y", "note"])
    w.writerows([(i, r, f"{x:.1f}", f"{y:.1f}", n) for i, r, x, y, n in summary.found])
    files.write_text(os.path.join(folder, "rois_found.csv"), buf.getvalue())
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["image_id", "file", "roi", "reason"])
  w.writerows(summary.excluded)
  w.writerows([(i, "", "", "image without a label row") for i in summary.skipped_unlabelled])
  files.write_text(os.path.join(folder, "excluded.csv"), buf.getvalue())
