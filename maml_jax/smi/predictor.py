"""A kept adapted model: saving it, loading it, staging new X-rays with it.

A saved model is a folder, written atomically:

    model.json    format, configuration, ROI names, classes and label scheme,
                  voting rule and ROI weights, where it came from, synthetic flag
    params.npz    the adapted parameters, keyed by '/'-joined parameter path
                  (with a leading ROI axis for per-ROI learners)
    support.npz   the support ROI crops (uint8 [n, R, 64, 64]) and labels: the
                  batch-norm statistics of every prediction are taken from them

The support crops travel with the parameters because the networks normalise
with batch statistics: a new image is classified together with the support
rows, whose statistics alone are used (so its result depends on nothing else).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from maml_jax.config import Config
from maml_jax import io as files
from maml_jax.smi import voting
from maml_jax.smi.errors import SMIDataError
from maml_jax.learner import predict_fn, to_model_input
from maml_jax.models import FEATURE_INPUTS, input_shape, model_for

FORMAT = "maml_jax.smi_model"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class AdaptedModel:
  config: Config
  model: Any
  params: Any
  support_rois: np.ndarray      # uint8 [n, R, 64, 64]
  support_y: np.ndarray         # int32 [n]
  roi_names: tuple[str, ...]
  classes: tuple[str, ...]
  weights: np.ndarray           # float [R] for the weighted vote
  per_roi: bool
  synthetic: bool
  info: dict                    # the rest of model.json


@functools.lru_cache(maxsize=2)
def _backbone(image_size: int):
  from maml_jax.pretrained import frozen
  return frozen.efficientnet(image_size)


def layout(rois: np.ndarray, config, per_roi: bool):
  """uint8 [n, R, h, w] crops to network input, float32 [n*R, S, S, C] for one
  learner over all ROIs (image-major) or [R, n, S, S, C] for per-ROI learners;
  for a head on frozen features (the X-ray model), the crops' features
  float32 [n*R, D]."""
  n, r = rois.shape[:2]
  if config.model in FEATURE_INPUTS:
    if per_roi:
      raise SMIDataError(f"the {config.model} network has one learner over all ROIs, not one per ROI")
    from maml_jax.pretrained.imagenet_check import batched_apply
    crops = np.asarray(rois).reshape((n * r,) + rois.shape[2:] + (1,))
    return batched_apply(_backbone(config.image_size).apply, crops, 64, progress=False)
  x = np.swapaxes(rois, 0, 1) if per_roi else rois.reshape((n * r,) + rois.shape[2:])
  return to_model_input(x, config.image_size, config.channels)


def _flatten(tree, prefix="") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    if "/" in str(k):
      raise ValueError(f"parameter name {k!r} contains '/'")
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def save(folder: str, *, config: Config, params, support_rois: np.ndarray, support_y: np.ndarray,
         roi_names: Sequence[str], classes: Sequence[str], weights: np.ndarray, per_roi: bool,
         synthetic: bool, info: Optional[dict] = None, overwrite: bool = True) -> str:
  """Writes a saved adapted model (see the module docstring); returns the folder."""
  with files.atomic_dir(folder, overwrite=overwrite) as tmp:
    files.write_npz(os.path.join(tmp, "params.npz"), **_flatten(jax.device_get(params)))
    files.write_npz(os.path.join(tmp, "support.npz"), rois=np.asarray(support_rois, np.uint8),
                    label=np.asarray(support_y, np.int32))
    meta = {"format": FORMAT, "version": VERSION, "synthetic": bool(synthetic), "config": config.to_dict(),
            "roi_names": list(roi_names), "classes": list(classes), "per_roi_learners": bool(per_roi),
            "weights": [float(w) for w in weights], **(info or {})}
    files.write_json(os.path.join(tmp, "model.json"), meta)
  return folder


def load(folder: str) -> AdaptedModel:
  """Reads and validates a saved adapted model; SMIDataError naming the file if it
  is not one: missing or malformed files and keys, parameters that do not
  match the configuration's network (names and shapes), non-finite values."""
  path = os.path.join(folder, "model.json")
  if not os.path.isfile(path):
    raise SMIDataError(f"{folder}: not a saved model (no model.json; make one with `adapt --save`)")
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise SMIDataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
  if not isinstance(meta, dict):
    raise SMIDataError(f"{path}: expected a JSON object, got a {type(meta).__name__}")
  if meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise SMIDataError(f"{path}: format {meta.get('format')!r} v{meta.get('version')} is not {FORMAT} v{VERSION}")
  kinds = {"config": dict, "roi_names": list, "classes": list, "weights": list, "per_roi_learners": bool,
           "synthetic": bool}
  for key, kind in kinds.items():
    if not isinstance(meta.get(key), kind):
      raise SMIDataError(f"{path}: '{key}' must be a {kind.__name__}, got {meta.get(key)!r:.80}")
  roi_names, classes = tuple(map(str, meta["roi_names"])), tuple(map(str, meta["classes"]))
  if not roi_names or len(classes) < 2:
    raise SMIDataError(f"{path}: needs at least one ROI and two classes, has {len(roi_names)} and {len(classes)}")
  try:
    config = Config.from_dict(meta["config"]).validate()
    weights = np.asarray(meta["weights"], np.float64)
  except (ValueError, TypeError) as e:
    raise SMIDataError(f"{path}: {type(e).__name__}: {e}") from None
  if weights.shape != (len(roi_names),) or not np.isfinite(weights).all():
    raise SMIDataError(f"{path}: 'weights' must be {len(roi_names)} finite numbers, got {meta['weights']!r:.80}")
  if len(classes) > config.ways:
    raise SMIDataError(f"{path}: {len(classes)} classes but the network has {config.ways} outputs")
  flat = _read_npz(os.path.join(folder, "params.npz"))
  sup = _read_npz(os.path.join(folder, "support.npz"))
  _check_params(flat, config, len(roi_names) if meta["per_roi_learners"] else None, os.path.join(folder, "params.npz"))
  rois, y = sup.get("rois"), sup.get("label")
  where = os.path.join(folder, "support.npz")
  if rois is None or y is None:
    raise SMIDataError(f"{where}: needs the arrays 'rois' and 'label', has {sorted(sup)}")
  if rois.dtype != np.uint8 or rois.ndim != 4 or rois.shape[1:] != (len(roi_names), 64, 64):
    raise SMIDataError(f"{where}: expected uint8 [n, {len(roi_names)}, 64, 64], got {rois.dtype} {list(rois.shape)}")
  if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(rois),) or len(y) == 0 or \
      y.min() < 0 or y.max() >= len(classes):
    raise SMIDataError(f"{where}: 'label' must be {len(rois)} (>= 1) class indices 0..{len(classes) - 1}")
  info = {k: v for k, v in meta.items() if k not in ("config", "roi_names", "classes", "weights",
                                                     "per_roi_learners", "synthetic")}
  return AdaptedModel(config, model_for(config), _unflatten(flat), rois, y.astype(np.int32), roi_names,
                      classes, weights, bool(meta["per_roi_learners"]), bool(meta["synthetic"]), info)


def _read_npz(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise SMIDataError(f"{path}: missing (a saved model holds model.json, params.npz and support.npz)")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except Exception as e:   # numpy and zipfile raise many types for a damaged file
    raise SMIDataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def _check_params(flat: dict, config: Config, rois: Optional[int], where: str) -> None:
  """The saved parameters must be exactly the network's (names, shapes; a leading
  ROI axis for per-ROI learners) and finite."""
  model = model_for(config)
  shape = (2,) + input_shape(config)
  tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros(shape)))["params"]
  want = {"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  missing, extra = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
  if missing or extra:
    raise SMIDataError(f"{where}: parameters do not match the {config.model} network: missing {missing[:3]}, "
                       f"unexpected {extra[:3]}")
  for k, w in want.items():
    expect = ((rois,) if rois else ()) + tuple(w.shape)
    if flat[k].shape != expect or not np.issubdtype(flat[k].dtype, np.floating):
      raise SMIDataError(f"{where}: parameter {k} is {flat[k].dtype} {list(flat[k].shape)}, the network needs "
                         f"float {list(expect)}")
    if not np.isfinite(flat[k]).all():
      raise SMIDataError(f"{where}: parameter {k} holds non-finite values (NaN or inf); the model is damaged")


def predict_rois(m: AdaptedModel, rois: np.ndarray) -> np.ndarray:
  """Class probabilities of each ROI of each image.

  Args:
    rois: uint8 [k, R, 64, 64], ROIs in the model's order.
  Returns:
    float32 [k, R, C].
  """
  if rois.ndim != 4 or rois.shape[1] != len(m.roi_names):
    raise SMIDataError(f"expected ROI crops [k, {len(m.roi_names)}, 64, 64], got {list(rois.shape)}")
  fn = predict_fn(m.model, len(m.classes), m.per_roi)
  probs = np.asarray(fn(m.params, layout(m.support_rois, m.config, m.per_roi), layout(rois, m.config, m.per_roi)))
  k, r = rois.shape[:2]
  return np.swapaxes(probs, 0, 1) if m.per_roi else probs.reshape(k, r, -1)


def stage_images(m: AdaptedModel, rois: np.ndarray, rule: str = "majority") -> dict:
  """Stages of k images: {"stage" int [k] class index, "probs" [k, C] (ROI mean),
  "roi_probs" [k, R, C], "roi_votes" int [k, R]}."""
  probs = predict_rois(m, rois)
  return {"stage": voting.combine(rule, probs, m.weights), "probs": probs.mean(1),
          "roi_probs": probs, "roi_votes": probs.argmax(-1)}
