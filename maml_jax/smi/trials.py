"""Support/query draws for the repeated SMI experiments (the paper's 5 trials).

Trial t draws, for every class, `shots` support images and `queries` query
images, all distinct.  When patient ids are known the two sets are also
disjoint by patient (no patient has an image on both sides), because two
X-rays of one child look alike and would inflate the score.  The draw depends
only on (seed, t): `numpy.random.default_rng([seed, t])`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from maml_jax.smi.errors import SMIDataError


class Trial(NamedTuple):
  """Rows of one trial, class-major (all of class 0 first, then class 1, ...)."""
  support: np.ndarray   # int64 [classes * shots] image rows
  query: np.ndarray     # int64 [classes * queries]


def check_class_sizes(label: np.ndarray, classes: Sequence[str], shots: int, queries: int, *, where: str) -> None:
  """Raises SMIDataError naming every class with too few images."""
  counts = np.bincount(label, minlength=len(classes))
  need = shots + queries
  short = [(c, int(n)) for c, n in zip(classes, counts.tolist()) if n < need]
  if short:
    detail = "; ".join(f"class {c} has {n}" + (" (empty)" if n == 0 else "") for c, n in short)
    raise SMIDataError(f"{where}: {detail}; {shots} shots + {queries} queries = {need} images per class are needed "
                       f"(lower --queries or --shots, or add images)")


def draw_trial(label: np.ndarray, num_classes: int, shots: int, queries: int, *, seed: int, trial: int,
               patient_id: Optional[np.ndarray] = None, where: str = "data",
               classes: Sequence[str] = ()) -> Trial:
  """Draws trial `trial`'s support and query rows.

  Support images are drawn first for every class, marking their patients;
  query images are then drawn only from unmarked patients.

  Args:
    label: int [N] class indices.
    patient_id: [N] ids ("" = unknown, treated as a patient of its own) or None.
  Returns:
    Trial with class-major rows.
  """
  rng = np.random.default_rng([seed, trial])
  names = list(classes) or [str(c) for c in range(num_classes)]
  check_class_sizes(np.asarray(label), names, shots, queries, where=where)
  n = len(label)
  if patient_id is None:
    group = np.arange(n)
  else:
    pid = np.asarray(patient_id).astype(str)
    _, group = np.unique(pid, return_inverse=True)
    unknown = pid == ""
    group = np.where(unknown, group.max() + 1 + np.arange(n), group)
  order = {c: rng.permutation(np.flatnonzero(label == c)) for c in range(num_classes)}
  in_support = np.zeros(group.max() + 1, bool)
  support: dict[int, np.ndarray] = {}
  for c in range(num_classes):
    support[c] = order[c][:shots]
    in_support[group[support[c]]] = True
  query: dict[int, np.ndarray] = {}
  for c in range(num_classes):
    rest = order[c][shots:]
    rest = rest[~in_support[group[rest]]]
    if len(rest) < queries:
      raise SMIDataError(f"{where}: trial {trial}: class {names[c]} has only {len(rest)} image{'s' if len(rest) != 1 else ''} from patients "
                         f"outside the support set; {queries} queries are needed (lower --queries or --shots)")
    query[c] = rest[:queries]
  return Trial(np.concatenate([support[c] for c in range(num_classes)]),
               np.concatenate([query[c] for c in range(num_classes)]))


def fold_split(shots: int, num_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Two (train, held-out) splits of class-major support positions, per class.

  Split 1 trains on the first ceil(K/2) images of each class and holds out the
  rest; split 2 trains on the last ceil(K/2) and holds out the first
  floor(K/2).  Both splits have the same shapes (one compilation); with odd K
  the middle image is in both training halves and never held out.

  Returns:
    [(train, held), (train, held)]: int positions into the support rows.
  """
  half, rest = (shots + 1) // 2, shots // 2
  pos = np.arange(num_classes * shots).reshape(num_classes, shots)
  return [(pos[:, :half].reshape(-1), pos[:, half:].reshape(-1)),
          (pos[:, shots - half:].reshape(-1), pos[:, :rest].reshape(-1))]
