"""The repeated few-shot SMI experiment of `adapt`: draw, adapt, classify every ROI, vote.

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
The combination rules and scores are applied afterwards
(`maml_jax.smi.summary.summarise`).

The trials are the grid's: its draw (`sources.smi_source`), its "meta"
predictor (`methods.meta_predictor`) and, beside them, its baselines
(`compare`); and the scores of `voting`.
"""
from __future__ import annotations

import dataclasses
import tempfile
from typing import Any, Optional

import jax
import numpy as np

from maml_jax.data.progress import progress as progress_bar
from maml_jax.experiment import grid, methods, paper, sources, store, tables
from maml_jax.experiment.backbones import NetSpec
from maml_jax.learner import Learner, adapt_fn
from maml_jax.smi import trials as tr
from maml_jax.smi import voting
from maml_jax.smi.predictor import layout
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


def _meta_predictor(source, learner: Learner, per_roi: bool):
  """The grid's "meta" column predictor for `learner` (one learner over all ROIs
  or one per ROI) on `source`."""
  c = learner.config
  spec = NetSpec(c.model, c.width, c.image_size, c.channels)
  inputs = lambda rows: spec.inputs(source.crops[np.asarray(rows)])
  return methods.meta_predictor(learner, source.ways, inputs, per_roi=source.rois if per_roi else 0), inputs


def run_trials(data: SMIData, learner: Learner, *, shots: int, queries: int = 15, trials: int = 5,
               seed: int = 0, per_roi: bool = False, weight_folds: bool = True,
               progress: bool = True, keep_first: bool = False, where: str = "") -> TrialResults:
  """Runs the experiment (see the module docstring).

  The draw (`experiment.sources.smi_source`), the predictor
  (`experiment.methods.meta_predictor`) and the scores (`voting.scores`) are
  the ones `run.py experiment --table 3,4` uses, so trial t here is repeat t
  of its "meta" cells.
  """
  c, r = data.num_classes, len(data.roi_names)
  where = where or data.source or "data"
  learner.check_classes(c, where)
  tr.check_class_sizes(data.label, data.classes, shots, queries, where=where)
  source = sources.smi_source(data, queries=queries, seed=seed, where=where)
  predict, inputs = _meta_predictor(source, learner, per_roi)
  folds = tr.fold_split(shots, c)
  out = dict(probs=[], query_y=[], weights=[], acc=[], s=[], q=[])
  first_params = first_support = None
  for t in progress_bar(range(trials), desc=f"SMI {shots}-shot trials", unit="trial", disable=not progress):
    draw = source.draw(shots, t)
    probs = predict(grid.crop_task(source, draw), None).reshape(len(draw.query), r, c)
    acc = np.full(r, np.nan)
    weights = np.full(r, 1.0 / r)
    if weight_folds and shots >= 2:
      correct = np.full((len(draw.support), r), np.nan)
      for train, held in folds:
        sub = methods.CropTask(source.crop_rows(draw.support[train]), np.repeat(draw.support_y[train], r).astype(np.int32),
                       source.crop_rows(draw.support[held]))
        p = predict(sub, None).reshape(len(held), r, c)
        correct[held] = p.argmax(-1) == draw.support_y[held][:, None]
      acc = np.nanmean(correct, 0)
      weights = voting.support_weights(acc, c)
    if keep_first and t == 0:
      s_rois, s_y = data.rois[draw.support], data.label[draw.support]
      y = np.tile(s_y[None], (r, 1)).astype(np.int32) if per_roi else np.repeat(s_y, r).astype(np.int32)
      x = layout(s_rois, learner.config, per_roi)
      params, _ = adapt_fn(learner, c, per_roi)(x, y, x)    # the same adaptation (it sees the support set only)
      first_params, first_support = jax.device_get(params), (s_rois, s_y)
    for k, v in zip(("probs", "query_y", "weights", "acc", "s", "q"),
                    (probs, draw.query_y, weights, acc, draw.support, draw.query)):
      out[k].append(v)
  return TrialResults(np.stack(out["probs"]).astype(np.float32), np.stack(out["query_y"]).astype(np.int32),
                      np.stack(out["weights"]), np.stack(out["acc"]), np.stack(out["s"]), np.stack(out["q"]),
                      first_params, first_support)


# Columns shown beside the meta-learned result by `adapt` (grid names).
COMPARISON = (("meta", "scratch"), ("finetune", "scratch"), ("base", "scratch"), ("ncm", "scratch"))


def compare(data: SMIData, learner: Learner, *, shots: int, queries: int = 15, trials: int = 5, seed: int = 0,
            progress: bool = True, where: str = "", meta: Optional[TrialResults] = None) -> dict:
  """The meta-learned result beside baselines on the same trials, through the
  experiment grid (`experiment.grid.run`, the path of `run.py experiment`).

  Columns (all on the learner's own architecture and input size): the
  meta-learned initialisation adapted by MAML; the same initialisation
  fine-tuned like base learning; base learning (the network from random
  initialisation); nearest class mean on a randomly initialised network's
  features.  Returns {"columns": {"method/backbone": {"label", "mean", "ci95",
  "n", "per_repeat"}} (accuracy %), "chance": %}.

  `meta`: `run_trials`' results on the same trials (same shots, queries,
  trials and seed, one learner over all ROIs); the meta-learned column is then
  their majority vote, not adapted a second time.
  """
  c = learner.config
  source = sources.smi_source(data, queries=queries, seed=seed, where=where)
  ctx = methods.Context(source, NetSpec(c.model, c.width, c.image_size, c.channels),
                        learners={("meta", "scratch"): learner})
  columns = COMPARISON[1:] if meta is not None else COMPARISON
  predictors = {col: methods.predictor(*col, ctx) for col in columns}
  with tempfile.TemporaryDirectory() as tmp:
    st = store.ResultsStore(tmp)
    grid.run(source, columns, predictors, st, shots=(shots,), repeats=trials, seed=seed, progress=progress)
    summary = tables.summarise(st.records, "smi")
  if meta is not None:
    if meta.probs.shape[0] != trials or meta.query_y.shape[1] != queries * data.num_classes:
      raise ValueError(f"the meta results hold {meta.probs.shape[0]} trials of {meta.query_y.shape[1]} queries; "
                       f"the comparison draws {trials} of {queries * data.num_classes}")
    per_trial = [float(np.mean(voting.majority(p) == y)) for p, y in zip(meta.probs, meta.query_y)]
    summary["accuracy"][("meta", "scratch", shots)] = tables.percent_stats(per_trial)
  labels = {("meta", "scratch"): f"meta-learned init ({c.model}), MAML adaptation, {learner.steps} steps",
            ("finetune", "scratch"): "meta-learned init, fine-tuned like base learning",
            ("base", "scratch"): f"base learning: {c.model} from random init",
            ("ncm", "scratch"): f"nearest class mean on a random {c.model}'s features"}
  cols = {f"{m}/{b}": {"label": labels[(m, b)], "method": paper.column_label(m, b),
                       **summary["accuracy"][(m, b, shots)]} for m, b in COMPARISON}
  return {"columns": cols, "chance": 100.0 / data.num_classes}
