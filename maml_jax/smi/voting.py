"""Combining the per-ROI predictions of an image into one stage.

All rules take `probs`, float [..., R, C]: the class probabilities of each of
an image's R ROIs, and return int [...] class indices.

- majority: each ROI votes for its most probable class; most votes wins (the
  paper's rule).  A tie between classes is broken by the ROI probabilities
  summed over all ROIs, restricted to the tied classes.
- average: the class with the highest mean probability over ROIs.
- weighted: like majority, but ROI r's vote counts w_r; ties broken by the
  w-weighted summed probabilities.  The weights come from the support set
  only (`support_weights`).
"""
from __future__ import annotations

import numpy as np


def _vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
  num_classes = probs.shape[-1]
  votes = np.argmax(probs, axis=-1)                                     # [..., R]
  score = (np.eye(num_classes)[votes] * weights[:, None]).sum(-2)       # [..., C]
  tied = np.isclose(score, score.max(-1, keepdims=True), rtol=0, atol=1e-9)
  tiebreak = (probs * weights[:, None]).sum(-2)                         # [..., C]
  return np.argmax(np.where(tied, tiebreak, -np.inf), axis=-1)


def majority(probs: np.ndarray) -> np.ndarray:
  """Equal-weight majority vote; ties broken by summed probabilities."""
  probs = np.asarray(probs, np.float64)
  return _vote(probs, np.ones(probs.shape[-2]))


def average(probs: np.ndarray) -> np.ndarray:
  """Argmax of the probabilities averaged over ROIs."""
  return np.argmax(np.asarray(probs, np.float64).mean(-2), axis=-1)


def weighted(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Weighted vote with per-ROI weights w [R] (non-negative, not all zero)."""
  w = np.asarray(weights, np.float64)
  if w.shape != (np.shape(probs)[-2],) or np.any(w < 0) or not np.any(w > 0):
    raise ValueError(f"weights must be {np.shape(probs)[-2]} non-negative numbers, not all zero; got {w}")
  return _vote(np.asarray(probs, np.float64), w)


def support_weights(roi_accuracy: np.ndarray, num_classes: int) -> np.ndarray:
  """ROI weights from accuracies measured on held-out support images.

  w_r = max(acc_r - 1/C, 0): an ROI at chance level gets no say; if every ROI
  is at or below chance the weights fall back to equal.  Normalised to sum 1.

  Args:
    roi_accuracy: float [R] in [0, 1].
  Returns:
    float [R].
  """
  acc = np.asarray(roi_accuracy, np.float64)
  w = np.maximum(acc - 1.0 / num_classes, 0.0)
  if not np.any(w > 0):
    w = np.ones_like(acc)
  return w / w.sum()


RULES = ("majority", "average", "weighted")


def scores(probs: np.ndarray, query_y: np.ndarray) -> dict:
  """The scores of one trial, the one place they are computed.

  Args:
    probs: float [m, R, C] class probabilities of each query image's R ROIs.
    query_y: int [m] true classes.
  Returns:
    {"accuracy": majority-vote accuracy (the paper's rule), "average_vote_accuracy",
     "roi_accuracy": [R] each ROI alone}; with R = 1 only "accuracy".
  """
  probs = np.asarray(probs, np.float64)
  y = np.asarray(query_y)
  if probs.shape[1] == 1:
    return {"accuracy": float(np.mean(probs[:, 0].argmax(-1) == y))}
  return {"accuracy": float(np.mean(majority(probs) == y)),
          "average_vote_accuracy": float(np.mean(average(probs) == y)),
          "roi_accuracy": [float(a) for a in (probs.argmax(-1) == y[:, None]).mean(0)]}


def combine(rule: str, probs: np.ndarray, weights=None) -> np.ndarray:
  if rule == "majority":
    return majority(probs)
  if rule == "average":
    return average(probs)
  if rule == "weighted":
    return weighted(probs, weights)
  raise ValueError(f"unknown voting rule {rule!r}; known: {RULES}")
