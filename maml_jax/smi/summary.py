"""Scores of repeated few-shot SMI trials: every combination rule and each ROI alone.

The trials themselves (draw, adapt, classify every ROI) are run through the
experiment grid's draw and predictor by `maml_jax.experiment.smi_trials`.
"""
from __future__ import annotations

import numpy as np

from maml_jax.smi import clinical_metrics as cm
from maml_jax.smi import voting


def summarise(res, classes, roi_names, *, weight_folds: bool = True) -> dict:
  """Scores of every combination rule and of each ROI alone, from
  `experiment.smi_trials.TrialResults` `res`.

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
