"""Every (method, backbone) column of the grid as one function of a task.

A predictor takes a `CropTask` (support crop rows with labels, query crop
rows, all rows of the source's `crops`) and a PRNG key, and returns class
probabilities float32 [queries, ways] for the query crops.  What it may look
at: the support crops and labels, the query crops (one by one: batch norm
always uses the support set's statistics), and what was learned before the
experiment (pretrained weights, meta-trained initialisations).

Columns:
  base/pretrained     FC head from random init on frozen features (transfer learning)
  base/scratch        the whole scratch network from random init
  meta|fomaml|anil/pretrained   a head meta-learned on frozen features, adapted
  meta|fomaml|anil/scratch      a meta-trained scratch network, adapted
  metaxr/*            as meta, meta-trained on X-ray tasks (`xray_tasks`)
  finetune/*          the "meta" column's initialisation trained on the support
                      set like base learning (same optimiser, same steps)
  ncm/*, linprobe/*   nearest class mean / linear probe on frozen features:
                      the pretrained ones, or a randomly initialised scratch
                      network's ("scratch")
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np

from maml_jax.baselines import base_learning as bl
from maml_jax.baselines import simple
from maml_jax.errors import UserError
from maml_jax.experiment import paper
from maml_jax.experiment.backbones import NetSpec, random_features
from maml_jax.experiment.sources import TaskSource


class CropTask(NamedTuple):
  support: np.ndarray     # int64 [n] rows of source.crops
  support_y: np.ndarray   # int32 [n]
  query: np.ndarray       # int64 [m]


Predictor = Callable[[CropTask, Any], np.ndarray]


@dataclasses.dataclass
class Context:
  """What the predictors share for one source.

  Attributes:
    source: the test data.
    spec: the scratch network.
    pretrained_features: float32 [len(source.crops), D], the frozen pretrained
      features of every crop (None when no pretrained column runs).
    learners: (method, backbone) -> `maml_jax.learner.Learner` for the
      meta-learned columns.
    age_model: `maml_jax.smi.bone_age.AgeModel` on an image's concatenated
      ROI features, for the supervised age columns; age_boundaries: the ages
      (months) where stages 2, 3, ... begin.
  """
  source: TaskSource
  spec: NetSpec
  pretrained_features: Optional[np.ndarray] = None
  learners: dict = dataclasses.field(default_factory=dict)
  age_model: Any = None
  age_boundaries: Optional[list] = None

  def images(self, rows: np.ndarray, spec: Optional[NetSpec] = None):
    """float32 [n, S, S, C] network input of the crops at `rows`."""
    return (spec or self.spec).inputs(self.source.crops[np.asarray(rows)])

  def features(self, rows: np.ndarray) -> np.ndarray:
    if self.pretrained_features is None:
      raise RuntimeError("pretrained features were not computed for this source")
    return self.pretrained_features[rows]


def _softmax(logits) -> np.ndarray:
  return np.asarray(jax.nn.softmax(logits, -1))


def _simple(method: str, fs, y, fq, ways: int) -> np.ndarray:
  if method == "ncm":
    return _softmax(simple.prototype_logits(fs, y, fq, ways=ways))
  params, _ = simple.fit_linear_probe(fs, y, ways=ways)
  return _softmax(simple.linear_probe_logits(params, fq))


def meta_predictor(learner, ways: int, inputs: Callable, per_roi: int = 0) -> Predictor:
  """MAML adaptation of `learner` (`maml_jax.learner.adapt_fn`); `inputs(rows)` gives
  the network input of crop rows.  With per_roi = R, one learner per ROI:
  crop rows are image-major, so ROI r is every R-th row."""
  from maml_jax.learner import adapt_fn
  fn = adapt_fn(learner, ways, bool(per_roi))
  if not per_roi:
    return lambda t, key: np.asarray(fn(inputs(t.support), t.support_y, inputs(t.query))[1])

  def by_roi(t, key):
    r = per_roi
    split = lambda x: np.swapaxes(np.asarray(x).reshape((-1, r) + np.shape(x)[1:]), 0, 1)   # [R, n, ...]
    probs = fn(split(inputs(t.support)), split(t.support_y), split(inputs(t.query)))[1]      # [R, m, C]
    return np.swapaxes(np.asarray(probs), 0, 1).reshape(-1, ways)
  return by_roi


def fine_tune_predictor(learner, ways: int, inputs: Callable) -> Predictor:
  """The meta-learned initialisation trained on the support set with base
  learning's full-batch Adam, `base_learning.TRAIN_STEPS` steps (no learned
  inner rates, no meta-learned step count); queries read with the support
  set's batch-norm statistics and the first `ways` outputs.  With per-step
  batch norm (MAML++) it starts from the first inner step's scale and shift."""
  from maml_jax import maml
  model, params0 = learner.model, maml.params_at_step(learner.meta_params["model"], learner.config, 0)

  def fine_tune(t, key):
    sx, y = inputs(t.support), np.asarray(t.support_y, np.int32)
    fit = bl.train(model, params0, sx, y)
    p = np.asarray(bl.network_probs(model, fit.params, sx, inputs(t.query)), np.float64)[:, :ways]
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)   # = softmax of the first `ways` logits
  return fine_tune


def age_predictor(method: str, ctx: Context) -> Predictor:
  """The supervised age columns: each image's age predicted from its ROIs'
  features together; every crop of an image carries the image's stage (so
  Table 4 shows the whole-image model in every ROI row)."""
  from maml_jax.smi import bone_age
  if ctx.age_model is None:
    raise RuntimeError(f"no bone-age model for {method}")
  src, r = ctx.source, ctx.source.rois
  ages = lambda rows: bone_age.predict_age(ctx.age_model, ctx.features(rows).reshape(len(rows) // r, -1))
  if method == "agereg":
    boundaries = ctx.age_boundaries
    if boundaries is None:
      raise UserError(f"{src.description}: the stages are not age ranges, so the no-support age column "
                      f"(agereg) cannot read a stage off a predicted age; drop it from --methods (agemeans "
                      f"reads the stages off the support images instead)")
    return lambda t, key: np.repeat(bone_age.one_hot(bone_age.stages_of_age(ages(t.query), boundaries), src.ways),
                                    r, axis=0)
  return lambda t, key: np.repeat(bone_age.support_means(ages(t.support), t.support_y[::r], ages(t.query),
                                                         src.ways), r, axis=0)


def predictor(method: str, backbone: str, ctx: Context) -> Predictor:
  """The column's predictor (see the module docstring)."""
  ways = ctx.source.ways
  if method not in paper.METHODS or backbone not in paper.BACKBONES:
    raise ValueError(f"unknown column {method}/{backbone}; methods {paper.METHODS}, backbones {paper.BACKBONES}")

  if method in paper.AGE_METHODS:
    return age_predictor(method, ctx)

  if method in paper.META_METHODS or method == "finetune":
    learner = ctx.learners.get(("meta" if method == "finetune" else method, backbone))
    if learner is None:
      raise RuntimeError(f"no meta-learned model for {method}/{backbone}")
    learner.check_classes(ways, ctx.source.description)
    inputs = ctx.features if backbone == "pretrained" else (
        lambda rows, c=learner.config: ctx.images(rows, NetSpec(c.model, c.width, c.image_size, c.channels)))
    return (fine_tune_predictor if method == "finetune" else meta_predictor)(learner, ways, inputs)

  if backbone == "pretrained":
    if method == "base":
      def base_pretrained(t, key):
        head, fit = bl.fit_head(ctx.features(t.support), t.support_y, ways=ways, key=key)
        return np.asarray(bl.head_probs(head, fit.params, ctx.features(t.query)))
      return base_pretrained
    return lambda t, key: _simple(method, ctx.features(t.support), t.support_y, ctx.features(t.query), ways)

  model = ctx.spec.build(ways)
  if method == "base":
    def base_scratch(t, key):
      sx = ctx.images(t.support)
      fit = bl.fit_network(model, sx, t.support_y, key=key)
      return np.asarray(bl.network_probs(model, fit.params, sx, ctx.images(t.query)))
    return base_scratch

  def simple_scratch(t, key):
    sx, qx = ctx.images(t.support), ctx.images(t.query)
    params = bl.init_params(model, key, sx[:2])   # the same random network base/scratch starts from
    fs, fq = random_features(model, params, sx, qx)
    return _simple(method, fs, t.support_y, fq, ways)
  return simple_scratch
