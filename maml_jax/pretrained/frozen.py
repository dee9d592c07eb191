"""Frozen feature extractors and their per-image feature cache.

With the convolutions frozen, each image's feature vector is fixed, so it is
computed once per image and cached on disk; heads are then trained (or
meta-trained) on feature vectors instead of images: the same computation,
orders of magnitude cheaper.  Used by the experiment grid's "pre-trained"
columns and by the X-ray model (`maml_jax.smi.xray_model`).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, NamedTuple, Optional

import numpy as np

from maml_jax import io as files

FEATURE_BATCH = 64


class Backbone(NamedTuple):
  """A frozen feature extractor.

  name: identity for the feature cache; apply: float32 [B, H, W, 1] in [0, 1]
  -> float32 [B, D], each row depending on its own image only.
  """
  name: str
  apply: Callable
  description: str



def efficientnet(feature_size: int = 224, weights: Optional[str] = None) -> Backbone:
  from maml_jax.pretrained import efficientnet_lite0
  pre = efficientnet_lite0.load_pretrained(weights, image_size=feature_size)
  return Backbone(f"efficientnet-lite0-{feature_size}px", efficientnet_lite0.feature_extractor(pre),
                  f"EfficientNet-Lite0, ImageNet weights, frozen; 1280-d features at {feature_size}x{feature_size} input")


# -------------------------------------------------------------------- caching

def _fingerprint(crops: np.ndarray) -> str:
  h = hashlib.sha1()
  for i in range(0, len(crops), 4096):
    h.update(np.ascontiguousarray(crops[i:i + 4096]).tobytes())
  return f"{crops.shape}-{h.hexdigest()[:16]}"


def features(backbone: Backbone, crops: np.ndarray, cache_dir: str, tag: str,
             progress: bool = True) -> np.ndarray:
  """Features float32 [N, D] of uint8 crops [N, H, W, 1], computed once and cached
  as `<cache_dir>/<backbone>-<tag>.npy` (recomputed when the crops change)."""
  from maml_jax.pretrained.imagenet_check import batched_apply
  path = os.path.join(cache_dir, f"{backbone.name}-{tag}.npy")
  side = path[:-4] + ".json"
  key = {"backbone": backbone.name, "crops": _fingerprint(crops)}
  if os.path.exists(path) and os.path.exists(side):
    with open(side) as f:
      if json.load(f) == key:
        return np.load(path)
  out = batched_apply(backbone.apply, np.asarray(crops), FEATURE_BATCH, desc=f"{backbone.name} features ({tag})",
                      progress=progress)
  out = out.astype(np.float32)
  if not np.all(np.isfinite(out)):
    raise FloatingPointError(f"{backbone.name} gave non-finite features for {tag}")
  with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.save(f, out)
  files.write_json(side, key)
  return out
