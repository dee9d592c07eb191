"""Adapting a meta-trained network to new labelled examples, and predicting.

The library's adapt-and-predict API.  A `Learner` bundles a trained configuration, its network and meta-parameters
with the inner-step count used to adapt.  `adapt_fn` / `predict_fn` return
jitted functions that adapt to ROI crops and give class probabilities for
query crops, adapting by the run's algorithm (`adapt_and_score`).  Batch-norm
statistics for the queries come from the support rows only (`query_bn="support"`),
so an image's prediction never depends on the other images being classified.

Grayscale uint8 crops (e.g. the SMI pipeline's 64x64 ROIs) are brought to the
network's input by `to_model_input`: resized to `config.image_size`, replicated
to `config.channels`, scaled to [0, 1].  A network with more outputs than the
task's classes is trained with labels 0..C-1 and read through its first C
logits.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from maml_jax import algorithms, maml
from maml_jax.config import Config
from maml_jax.errors import UserError


def to_model_input(rois, image_size: int, channels: int) -> jax.Array:
  """ROI crops to network input.

  Args:
    rois: uint8 [..., h, w].
  Returns:
    float32 [..., image_size, image_size, channels] in [0, 1].
  """
  x = jnp.asarray(rois).astype(jnp.float32) / 255.0
  if x.shape[-2:] != (image_size, image_size):
    x = jax.image.resize(x, x.shape[:-2] + (image_size, image_size), method="linear")
    x = jnp.clip(x, 0.0, 1.0)
  return jnp.repeat(x[..., None], channels, axis=-1)


class TooManyClassesError(UserError):
  """A task with more classes than the meta-trained network has outputs."""


@dataclasses.dataclass(frozen=True)
class Learner:
  """A trained initialisation ready to adapt.

  Attributes:
    config: the training configuration (image_size, channels, ways, ...).
    model: the Flax module, `model.apply({"params": p}, x, stat_mask)`.
    meta_params: {"model": params, "lr": lrs} as `maml` uses them.
    steps: inner SGD steps when adapting (the configuration's eval_inner_steps
      unless overridden).
  """
  config: Config
  model: Any
  meta_params: Any
  steps: int

  @property
  def num_outputs(self) -> int:
    return self.config.ways

  def check_classes(self, num_classes: int, where: str) -> None:
    if num_classes > self.num_outputs:
      raise TooManyClassesError(f"{where}: {num_classes} classes, but the meta-trained network has only "
                         f"{self.num_outputs} outputs (ways={self.num_outputs}); meta-train with "
                         f"--ways {num_classes} or more")


def learner_from_trained(trained, steps: Optional[int] = None) -> Learner:
  """A Learner from `checkpoints.load_trained(workdir)`'s result."""
  cfg = trained.config
  return Learner(cfg, trained.model, trained.meta_params, cfg.eval_inner_steps if steps is None else steps)


def load_learner(workdir: str, steps: Optional[int] = None) -> Learner:
  """Loads the meta-trained model of `workdir`."""
  from maml_jax import checkpoints  # the engine's checkpoint reader
  return learner_from_trained(checkpoints.load_trained(workdir), steps)


def _probs(logits, num_classes):
  return jax.nn.softmax(logits[..., :num_classes], axis=-1)


def adapt_fn(learner: Learner, num_classes: int, per_roi: bool = False) -> Callable:
  """A jitted `f(support_x, support_y, query_x) -> (params, query_probs)`.

  One learner over all ROIs (default): support_x float32 [n, H, W, C],
  support_y int32 [n], query_x [m, H, W, C]; probs [m, num_classes].
  One learner per ROI (`per_roi`): every argument gets a leading ROI axis R
  and so do the adapted params and the probs [R, m, num_classes].
  """
  core = _adapt_core(learner.config, learner.model, learner.steps, num_classes, per_roi)
  return functools.partial(core, learner.meta_params)


@functools.lru_cache(maxsize=16)
def _adapt_core(cfg: Config, model, steps: int, num_classes: int, per_roi: bool) -> Callable:
  # Cached so that repeated experiments with one network reuse its compilations;
  # the meta-parameters are an argument, not a closed-over constant, so large
  # networks are not baked into the compiled program.
  adapt_and_score = algorithms.get(cfg.algorithm).adapt_and_score

  def one(meta_params, sx, sy, qx):
    params, logits = adapt_and_score(meta_params, sx, sy, qx, model=model, cfg=cfg, steps=steps, query_bn="support")
    return params, _probs(logits, num_classes)

  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)) if per_roi else one)


@functools.lru_cache(maxsize=16)
def predict_fn(model, num_classes: int, per_roi: bool = False) -> Callable:
  """A jitted `f(params, support_x, query_x) -> query_probs` for adapted params
  (shapes as in `adapt_fn`)."""

  def one(params, sx, qx):
    return _probs(maml.query_logits(model, params, sx, qx, "support"), num_classes)

  return jax.jit(jax.vmap(one) if per_roi else one)
