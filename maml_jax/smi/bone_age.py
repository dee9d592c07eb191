"""The supervised answer: bone age regressed on frozen ROI features.

A clinician-researcher with a labelled pool of other patients' radiographs
(bone age in months) has a conventional option before any few-shot method:
regress age on the images' features, then read each new radiograph's stage
off the predicted age at the stage boundaries.  It needs no support image of
the target at all when the target's stages are age ranges.

* `fit_ridge`: ridge regression of age on standardised features, the penalty
  chosen by exact leave-one-out error over a fixed grid (one SVD serves every
  penalty), so nothing is tuned on the scored patients.
* `stages_of_age`: stage indices from ages at boundaries (months).
* `support_means`: the same predicted age read against the support set
  instead of fixed boundaries: each stage's mean predicted age on its support
  images, a query taking the nearest mean (a 1-d nearest class mean).  This
  absorbs a shift of the predicted ages (another site, other stages) with K
  images per stage.

Pure numpy; features in, ages out.  Shapes: features float [n, D], ages float [n].
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from maml_jax.smi.errors import SMIDataError

# Ridge penalties tried, relative to the mean squared singular value of the
# standardised features (so the grid does not depend on D or n).
RELATIVE_PENALTIES = tuple(10.0 ** e for e in np.arange(-4, 2.01, 0.5))
MIN_TRAIN = 10


class AgeModel(NamedTuple):
  """A fitted ridge regression of bone age (months) on features.

  mean, scale: float64 [D] feature standardisation; coef: float64 [D];
  intercept: months; penalty: the chosen ridge penalty; loo_mae / loo_rmse:
  its leave-one-out errors on the training images (months); n_train.
  """
  mean: np.ndarray
  scale: np.ndarray
  coef: np.ndarray
  intercept: float
  penalty: float
  loo_mae: float
  loo_rmse: float
  n_train: int


def fit_ridge(features: np.ndarray, ages: np.ndarray, *, where: str = "training images") -> AgeModel:
  """Ridge regression of `ages` [n] on `features` [n, D], penalty by leave-one-out.

  Raises SMIDataError when ages are missing or non-finite, or there are fewer
  than MIN_TRAIN images.
  """
  x = np.asarray(features, np.float64)
  if ages is None:
    raise SMIDataError(f"{where}: the bone-age regression needs ages (an age_months or boneage_months column "
                       "in the labels the shards were made from); these shards carry none")
  y = np.asarray(ages, np.float64)
  if x.ndim != 2 or y.shape != (x.shape[0],):
    raise ValueError(f"features must be [n, D] and ages [n]; got {x.shape} and {y.shape}")
  if len(y) < MIN_TRAIN:
    raise SMIDataError(f"{where}: {len(y)} images are too few to fit a bone-age regression (need {MIN_TRAIN})")
  if not np.all(np.isfinite(y)):
    raise SMIDataError(f"{where}: {int(np.sum(~np.isfinite(y)))} images have no age; the bone-age regression "
                       "needs an age for every training image")
  mean = x.mean(0)
  scale = x.std(0)
  scale = np.where(scale > 1e-8, scale, 1.0)
  z = (x - mean) / scale
  y0 = y.mean()
  u, s, vt = np.linalg.svd(z, full_matrices=False)           # z = u diag(s) vt
  best = None
  for rel in RELATIVE_PENALTIES:
    lam = rel * float(np.mean(s ** 2))
    loo = loo_residuals(z, y, lam, svd=(u, s))
    mse = float(np.mean(loo ** 2))
    if best is None or mse < best[0]:
      best = (mse, lam, float(np.mean(np.abs(loo))))
  mse, lam, mae = best
  y0 = y.mean()
  coef = vt.T @ ((s / (s ** 2 + lam)) * (u.T @ (y - y0)))
  return AgeModel(mean, scale, coef, float(y0), float(lam), mae, float(np.sqrt(mse)), int(len(y)))


def loo_residuals(z: np.ndarray, y: np.ndarray, lam: float, svd=None) -> np.ndarray:
  """Leave-one-out residuals [n] of ridge with penalty `lam` on the weights and a
  free intercept, in closed form: for column-centred z [n, D], refitting
  without image i and predicting it misses by (y_i - fit_i) / (1 - h_ii), with
  h the hat matrix (whose intercept part is 1/n)."""
  u, s = svd if svd is not None else np.linalg.svd(z, full_matrices=False)[:2]
  shrink = s ** 2 / (s ** 2 + lam)
  r = y - y.mean()
  fitted = u @ (shrink * (u.T @ r))
  hat = (u ** 2) @ shrink + 1.0 / len(y)
  return (r - fitted) / (1.0 - hat)


def predict_age(model: AgeModel, features: np.ndarray) -> np.ndarray:
  """Predicted bone age (months), float64 [m], of features [m, D]."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[1] != model.coef.shape[0]:
    raise ValueError(f"the age model takes [m, {model.coef.shape[0]}] features; got {x.shape}")
  return ((x - model.mean) / model.scale) @ model.coef + model.intercept


def stages_of_age(ages: np.ndarray, boundaries: Sequence[float]) -> np.ndarray:
  """int32 [m] stage indices (0-based): how many boundaries (months) each age reaches."""
  b = np.asarray(boundaries, np.float64)
  return np.searchsorted(b, np.asarray(ages, np.float64), side="right").astype(np.int32)


def stage_boundaries(label_scheme: dict, num_classes: int, train_ages=None, train_y=None) -> tuple[list[float], str]:
  """The ages (months) where stages 2, 3, ... begin, and how they were found.

  Bone-age stages carry their boundaries in the label scheme.  Other stages
  (the paper's SMI stages) are not age ranges: their boundaries are estimated
  from the training images' ages, midway between the median ages of
  consecutive stages (so they come from the training patients only).
  """
  b = label_scheme.get("age_boundaries_months")
  if label_scheme.get("kind") == "bone_age_stages" and isinstance(b, list) and len(b) == num_classes - 1:
    return [float(v) for v in b], "the stages' own age boundaries"
  if train_ages is None or train_y is None:
    raise SMIDataError(f"the stages ({label_scheme.get('name')!r}) are not age ranges and no training images "
                       "with these stages and ages are at hand to estimate their boundaries")
  a, y = np.asarray(train_ages, np.float64), np.asarray(train_y)
  med = [np.median(a[y == c]) if np.any(y == c) else np.nan for c in range(num_classes)]
  if np.any(np.isnan(med)) or np.any(np.diff(med) <= 0):
    raise SMIDataError(f"the stages are not age ranges and the training images' median ages per stage "
                       f"({[round(float(m), 1) for m in med]} months) do not increase with the stage, so no age "
                       f"boundaries can be estimated for them; use the support-means column")
  return [float((med[c] + med[c + 1]) / 2) for c in range(num_classes - 1)], \
      "midway between the training images' median ages of consecutive stages"


def one_hot(index: np.ndarray, num_classes: int) -> np.ndarray:
  """float32 [m, C] probabilities that put everything on `index` [m]."""
  return np.eye(num_classes, dtype=np.float32)[np.asarray(index)]


def support_means(support_age: np.ndarray, support_y: np.ndarray, query_age: np.ndarray,
                  num_classes: int) -> np.ndarray:
  """float32 [m, C]: softmax of minus the distance (months / 12) of each query's
  predicted age to each stage's mean predicted age over its support images."""
  s, y = np.asarray(support_age, np.float64), np.asarray(support_y)
  means = np.array([s[y == c].mean() for c in range(num_classes)])
  d = -np.abs(np.asarray(query_age, np.float64)[:, None] - means[None]) / 12.0
  e = np.exp(d - d.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)
