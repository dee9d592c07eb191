"""Maturity label schemes: the paper's 11-to-5 merge, user mappings, ages.

Labels inside the pipeline are class indices 0..C-1 into a scheme's class
names; the merged SMI scheme has C = 5 with names "1".."5" (stage 1 = index 0).
The paper merges its 11 SMI stages into 5 because some stages have very few
images: {1,2}->1, {3,4}->2, {5,6}->3, {7,8,9}->4, {10,11}->5, which turns its
counts 188 145 277 68 10 48 75 2 11 29 12 into 333 345 58 88 41.

Data labelled with bone age only (such as the RSNA Pediatric Bone Age
radiographs) get *bone-age stages*: ages cut at boundaries, by default the
data's own quintiles (5 stages of equal size, rounded to whole months).
Bone-age stages are not the paper's SMI stages, and every record of such a
scheme says so.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from maml_jax.smi.errors import SMIDataError

# Stage (1-based, 11 stages) -> merged stage (1-based, 5 stages).
PAPER_MERGE: dict[int, int] = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 4, 9: 4, 10: 5, 11: 5}
PAPER_COUNTS_11 = (188, 145, 277, 68, 10, 48, 75, 2, 11, 29, 12)
PAPER_COUNTS_5 = (333, 345, 58, 88, 41)
SMI5_CLASSES = ("1", "2", "3", "4", "5")


def parse_mapping(text: str) -> dict[int, int]:
  """Parses a user mapping such as "1,2:1; 3,4:2; 5,6:3; 7,8,9:4; 10,11:5".

  Returns {source stage: target stage}, both 1-based.  Targets must form 1..C.
  """
  mapping: dict[int, int] = {}
  for part in text.replace(" ", "").split(";"):
    if not part:
      continue
    try:
      sources, target = part.split(":")
      t = int(target)
      for s in sources.split(","):
        if int(s) in mapping:
          raise SMIDataError(f"stage mapping {text!r}: stage {int(s)} is mapped twice")
        mapping[int(s)] = t
    except SMIDataError:
      raise
    except ValueError:
      raise SMIDataError(f"stage mapping {text!r}: cannot read {part!r}; expected e.g. '1,2:1;3,4:2'") from None
  targets = sorted(set(mapping.values()))
  if targets != list(range(1, len(targets) + 1)):
    raise SMIDataError(f"stage mapping {text!r}: target stages must be 1..C without gaps, got {targets}")
  return mapping


def merge_stages(stages: np.ndarray, mapping: Mapping[int, int] = PAPER_MERGE, *, where: str = "labels") -> np.ndarray:
  """Maps 1-based source stages to 1-based merged stages.

  Args:
    stages: int [n] source stages.
    mapping: {source: target}; a stage missing from it is an error.
    where: names the input in error messages (e.g. the CSV path).
  Returns:
    int32 [n] merged stages (1-based).
  """
  stages = np.asarray(stages)
  out = np.zeros(stages.shape, np.int32)
  for i, s in enumerate(stages.tolist()):
    if s not in mapping:
      raise SMIDataError(f"{where}: stage {s} (row {i + 1}) is outside the mapping "
                         f"(known stages {sorted(mapping)})")
    out[i] = mapping[s]
  return out


def stages_from_age(age_months: np.ndarray, boundaries: Sequence[float]) -> np.ndarray:
  """1-based stages from ages: stage = 1 + number of boundaries <= age.

  Args:
    age_months: float [n].
    boundaries: increasing ages (months) where stage 2, 3, ... begin.
  Returns:
    int32 [n] in 1..len(boundaries)+1.
  """
  b = np.asarray(boundaries, np.float64)
  if b.ndim != 1 or len(b) == 0 or np.any(np.diff(b) <= 0):
    raise SMIDataError(f"age boundaries must be increasing numbers, got {list(boundaries)}")
  return (1 + np.searchsorted(b, np.asarray(age_months, np.float64), side="right")).astype(np.int32)


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [num_classes]: how many labels fall in each class index."""
  return np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes]


def quantile_boundaries(age_months: np.ndarray, num_stages: int = 5) -> list[float]:
  """Ages (whole months) that cut `age_months` into `num_stages` groups of about equal size.

  Args:
    age_months: float [n], no NaN.
  Returns:
    num_stages - 1 increasing boundaries (stage k+1 begins at boundary k).
  """
  a = np.asarray(age_months, np.float64)
  q = np.round(np.quantile(a, np.arange(1, num_stages) / num_stages))
  if len(np.unique(q)) != len(q):
    raise SMIDataError(f"the ages cannot be cut into {num_stages} stages of about equal size "
                       f"(boundaries {q.tolist()} repeat); give --age-boundaries")
  return [float(b) for b in q]


def bone_age_scheme(boundaries: Sequence[float], how: str) -> dict:
  """The manifest record of a bone-age stage scheme (stage k = ages in its range)."""
  b = [float(x) for x in boundaries]
  edges = [0.0] + b + [float("inf")]
  ranges = [f"{lo:g}-{hi:g} months" if np.isfinite(hi) else f">= {lo:g} months"
            for lo, hi in zip(edges[:-1], edges[1:])]
  return {"name": "bone-age stages", "kind": "bone_age_stages", "source": "age",
          "how": how, "age_boundaries_months": b, "stage_ranges": ranges,
          "note": "stages cut from bone age, NOT the paper's skeletal-maturity (SMI) stages"}
