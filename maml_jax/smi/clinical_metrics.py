"""Scores for ordinal stage predictions (intervals over trials: `maml_jax.stats`).

Stages are ordered, so besides accuracy the pipeline reports how far off the
wrong answers are: mean absolute error in stages, the share within one stage,
and Cohen's kappa with quadratic weights (disagreements cost the squared
distance between stages).
"""
from __future__ import annotations

import numpy as np

from maml_jax.stats import mean_ci  # noqa: F401  (the project's interval; kept importable here)


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


def summary(y_true, y_pred, num_classes: int) -> dict:
  """Accuracy, MAE, within-one and quadratic kappa of pooled predictions."""
  return {"accuracy": accuracy(y_true, y_pred), "mae_stages": mean_absolute_error(y_true, y_pred),
          "within_one": within_one(y_true, y_pred), "quadratic_kappa": quadratic_kappa(y_true, y_pred, num_classes)}
