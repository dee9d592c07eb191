"""The repeated few-shot SMI experiment: draw, adapt, classify every ROI, vote.

Per trial t (drawn from (seed, t), see `trials`):
1. adapt the meta-learned initialisation on the support images' ROI crops
   (one learner over all ROIs, or one per ROI);
2. classify every ROI of every query image (probabilities [Q, R, C]);
3. estimate ROI weights for the weighted vote on the support set only, by
   2-fold cross-validation over support images: adapt on one half of each
   class's support images, classify the other half's ROIs, and swap
   (`trials.fold_split`); ROI r's accuracy on these held-out support images
   gives its weight (see `voting.support_weights`).  Accuracy on the support images themselves
   after adaptation would be useless (adaptation fits them, often perfectly).
The combination rules and scores are applied afterwards (`summarise`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np

from maml_jax.data.progress import progress as progress_bar
from maml_jax.smi import clinical_metrics as cm
from maml_jax.smi import trials as tr
from maml_jax.smi import voting
from maml_jax.learner import Learner, adapt_fn, to_model_input
from maml_jax.smi.shards import SMIData


@dataclasses.dataclass
class TrialResults:
  """Raw outcome of all trials.

  probs: float32 [T, Q, R, C] query ROI probabilities; query_y int32 [T, Q];
  weights: float [T, R] support-estimated ROI weights; support_roi_accuracy
  float [T, R] (held-out support accuracy behind the weights, NaN if not
  estimated); support_rows / query_rows int [T, *] image rows.
  first_params, first_support: trial 0's adapted parameters and support
  (ROIs uint8 [n, R, 64, 64], labels [n]) for saving the adapted model.
  """
  probs: np.ndarray
  query_y: np.ndarray
  weights: np.ndarray
  support_roi_accuracy: np.ndarray
  support_rows: np.ndarray
  query_rows: np.ndarray
  first_params: Any = None
  first_support: Optional[tuple[np.ndarray, np.ndarray]] = None


def layout(rois: np.ndarray, config, per_roi: bool):
  """uint8 [n, R, h, w] crops to network input, float32 [n*R, S, S, C] for one
  learner over all ROIs (image-major) or [R, n, S, S, C] for per-ROI learners."""
  n, r = rois.shape[:2]
  x = np.swapaxes(rois, 0, 1) if per_roi else rois.reshape((n * r,) + rois.shape[2:])
  return to_model_input(x, config.image_size, config.channels)


def _labels(y: np.ndarray, r: int, per_roi: bool):
  return np.tile(y[None], (r, 1)).astype(np.int32) if per_roi else np.repeat(y, r).astype(np.int32)


def classify(fn, learner: Learner, s_rois, s_y, q_rois, per_roi: bool):
  """Adapts on support crops, returns (params, probs float32 [m, R, C])."""
  m, r = q_rois.shape[:2]
  cfg = learner.config
  params, probs = fn(layout(s_rois, cfg, per_roi), _labels(s_y, r, per_roi), layout(q_rois, cfg, per_roi))
  probs = np.asarray(probs)
  probs = np.swapaxes(probs, 0, 1) if per_roi else probs.reshape(m, r, -1)
  return params, probs


def run_trials(data: SMIData, learner: Learner, *, shots: int, queries: int = 15, trials: int = 5,
               seed: int = 0, per_roi: bool = False, weight_folds: bool = True,
               progress: bool = True, keep_first: bool = False) -> TrialResults:
  """Runs the experiment (see the module docstring)."""
  c, r = data.num_classes, len(data.roi_names)
  where = data.source or "data"
  learner.check_classes(c, where)
  tr.check_class_sizes(data.label, data.classes, shots, queries, where=where)
  fn = adapt_fn(learner, c, per_roi)
  folds = tr.fold_split(shots, c)
  out = dict(probs=[], query_y=[], weights=[], acc=[], s=[], q=[])
  first_params = first_support = None
  for t in progress_bar(range(trials), desc=f"SMI {shots}-shot trials", unit="trial", disable=not progress):
    draw = tr.draw_trial(data.label, c, shots, queries, seed=seed, trial=t, patient_id=data.patient_id,
                         where=where, classes=data.classes)
    s_rois, s_y = data.rois[draw.support], data.label[draw.support]
    q_rois, q_y = data.rois[draw.query], data.label[draw.query]
    params, probs = classify(fn, learner, s_rois, s_y, q_rois, per_roi)
    acc = np.full(r, np.nan)
    weights = np.full(r, 1.0 / r)
    if weight_folds and shots >= 2:
      correct = np.full((len(s_y), r), np.nan)
      for train, held in folds:
        _, p = classify(fn, learner, s_rois[train], s_y[train], s_rois[held], per_roi)
        correct[held] = p.argmax(-1) == s_y[held][:, None]
      acc = np.nanmean(correct, 0)
      weights = voting.support_weights(acc, c)
    if keep_first and t == 0:
      first_params, first_support = jax.device_get(params), (s_rois, s_y)
    for k, v in zip(("probs", "query_y", "weights", "acc", "s", "q"),
                    (probs, q_y, weights, acc, draw.support, draw.query)):
      out[k].append(v)
  return TrialResults(np.stack(out["probs"]).astype(np.float32), np.stack(out["query_y"]).astype(np.int32),
                      np.stack(out["weights"]), np.stack(out["acc"]), np.stack(out["s"]), np.stack(out["q"]),
                      first_params, first_support)


def summarise(res: TrialResults, classes, roi_names, *, weight_folds: bool = True) -> dict:
  """Scores of every combination rule and of each ROI alone.

  Every score is computed per trial and given as mean +- 95% CI (t
  distribution) over trials; confusion matrices are summed over trials.
  """
  c = len(classes)
  rules = voting.RULES if weight_folds else ("majority", "average")
  result: dict = {"rules": {}, "per_roi": {}}
  for rule in rules:
    preds = np.stack([voting.combine(rule, p, w) for p, w in zip(res.probs, res.weights)])
    per_trial = [cm.summary(y, p, c) for y, p in zip(res.query_y, preds)]
    entry = {k: {**cm.mean_ci([s[k] for s in per_trial]), "per_trial": [s[k] for s in per_trial]}
             for k in per_trial[0]}
    entry["confusion"] = cm.confusion(res.query_y.reshape(-1), preds.reshape(-1), c).tolist()
    result["rules"][rule] = entry
  roi_pred = res.probs.argmax(-1)                                        # [T, Q, R]
  for j, name in enumerate(roi_names):
    accs = (roi_pred[:, :, j] == res.query_y).mean(1)
    result["per_roi"][name] = {**cm.mean_ci(accs), "per_trial": accs.tolist(),
                               "weight_mean": float(res.weights[:, j].mean()),
                               "support_heldout_accuracy_mean": (None if np.isnan(res.support_roi_accuracy[:, j]).all()
                                                                 else float(np.nanmean(res.support_roi_accuracy[:, j])))}
  return result
