"""Scores for ordinal stage predictions, and confidence intervals over trials.

Stages are ordered, so besides accuracy the pipeline reports how far off the
wrong answers are: mean absolute error in stages, the share within one stage,
and Cohen's kappa with quadratic weights (disagreements cost the squared
distance between stages).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [C, C]; rows are true classes, columns predictions."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
  return m


def accuracy(y_true, y_pred) -> float:
  return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def mean_absolute_error(y_true, y_pred) -> float:
  """Mean |true - predicted| in stages."""
  return float(np.mean(np.abs(np.asarray(y_true, np.int64) - np.asarray(y_pred, np.int64))))


def within_one(y_true, y_pred) -> float:
  """Share of predictions at most one stage away."""
  return float(np.mean(np.abs(np.asarray(y_true, np.int64) - np.asarray(y_pred, np.int64)) <= 1))


def quadratic_kappa(y_true, y_pred, num_classes: int) -> float:
  """Cohen's kappa with quadratic weights w_ij = (i - j)^2 / (C - 1)^2.

  kappa = 1 - sum(w * O) / sum(w * E), O the observed confusion matrix and E
  the one expected from the marginals if predictions were independent of the
  truth.  1 = perfect, 0 = chance.  NaN when E carries no weight (e.g. every
  true label and prediction is one class).
  """
  o = confusion(y_true, y_pred, num_classes).astype(np.float64)
  n = o.sum()
  i = np.arange(num_classes)
  w = (i[:, None] - i[None, :]) ** 2 / max(num_classes - 1, 1) ** 2
  e = np.outer(o.sum(1), o.sum(0)) / n
  den = (w * e).sum()
  return float("nan") if den == 0 else float(1.0 - (w * o).sum() / den)


def mean_ci(values, level: float = 0.95) -> dict:
  """Mean and the half-width of its t-distribution confidence interval.

  Returns {"mean", "ci95", "std", "n"}; ci95 is NaN for fewer than 2 values.
  """
  v = np.asarray(values, np.float64)
  n = len(v)
  mean = float(v.mean()) if n else float("nan")
  if n < 2:
    return {"mean": mean, "ci95": float("nan"), "std": float("nan"), "n": n}
  std = float(v.std(ddof=1))
  half = float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))
  return {"mean": mean, "ci95": half, "std": std, "n": n}


def summary(y_true, y_pred, num_classes: int) -> dict:
  """Accuracy, MAE, within-one and quadratic kappa of pooled predictions."""
  return {"accuracy": accuracy(y_true, y_pred), "mae_stages": mean_absolute_error(y_true, y_pred),
          "within_one": within_one(y_true, y_pred), "quadratic_kappa": quadratic_kappa(y_true, y_pred, num_classes)}
