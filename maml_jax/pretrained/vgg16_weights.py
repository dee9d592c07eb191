"""VGG16's ImageNet convolution weights from a file the user provides.

Two sources are read (neither is downloaded here):

* torchvision's `vgg16-397923af.pth` (a torch state dict; OIHW kernels under
  `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}`), read without
  PyTorch by `torch_pickle`.  It expects RGB in [0, 1] normalised with the
  ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
* Keras's `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (HDF5, read with
  h5py; HWIO kernels in layer groups `block1_conv1` .. `block5_conv3`).  It
  expects "caffe" input: BGR in 0..255 minus the mean (103.939, 116.779,
  123.68).  Its first kernel is flipped to RGB here, so both sources give
  parameters for RGB input and differ only in `mean`/`std`.

The 13 convolutions map by name onto the project's `vgg16` model (`conv_0` ..
`conv_12`, each `kernel` [3, 3, Cin, Cout] HWIO and `bias` [Cout]), and every
shape is checked against the model's own parameter tree.

Input normalisation.  The project's networks take images in [0, 1] with no
normalisation layer, so by default (`fold_normalization=True`) the source's
per-channel (x - mean) / std is folded into `conv_0`: kernel / std and
bias - sum(kernel * mean / std).  This is exact wherever the 3x3 window lies
inside the image; on the one-pixel border the model's zero padding stands for
raw black instead of the mean colour, a small difference.

Grayscale.  For a model whose `conv_0` takes 1 channel (64x64 grayscale ROIs),
the RGB kernel is summed over its input channels: a gray image through the
summed kernel gives exactly what the RGB network gives on that image replicated
into R, G and B (with the per-channel normalisation folded in as above).
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping, NamedTuple

import numpy as np

from maml_jax.errors import UserError
from maml_jax.pretrained import torch_pickle


class WeightFileError(UserError):
  """A VGG16 weight file that is missing, of neither format, or of other shapes."""

WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
TORCH_LAYERS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
KERAS_LAYERS = tuple(f"block{b}_conv{c}" for b, n in enumerate((2, 2, 3, 3, 3), 1)
                     for c in range(1, n + 1))
PARAM_NAMES = tuple(f"conv_{i}" for i in range(13))

TORCHVISION_MEAN, TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Keras "caffe" preprocessing, restated for RGB input in [0, 1]: (255 x - m) = (x - m/255) / (1/255).
KERAS_MEAN = tuple(m / 255.0 for m in (123.68, 116.779, 103.939))   # R, G, B
KERAS_STD = (1 / 255.0,) * 3


class Vgg16Weights(NamedTuple):
  """VGG16's conv parameters for RGB input and the input normalisation they expect.

  params: {"conv_i": {"kernel": float32 [3, 3, Cin, Cout], "bias": float32 [Cout]}}.
  mean, std: per RGB channel, for input in [0, 1].
  source: "torchvision" or "keras".
  """
  params: dict[str, dict[str, np.ndarray]]
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  source: str


def conv_shapes(in_channels: int = 3, widths=WIDTHS) -> dict[str, dict[str, tuple[int, ...]]]:
  """{"conv_i": {"kernel": (3, 3, Cin, Cout), "bias": (Cout,)}} for the 13 layers."""
  out, cin = {}, in_channels
  for name, w in zip(PARAM_NAMES, widths):
    out[name] = {"kernel": (3, 3, cin, w), "bias": (w,)}
    cin = w
  return out


# --------------------------------------------------------------------------- readers

def read_torchvision(path: str) -> Vgg16Weights:
  """Conv parameters from torchvision's VGG16 state dict (`vgg16-397923af.pth`).

  The classifier (about 120M parameters) is not read.
  """
  wanted = {f"features.{i}.{leaf}" for i in TORCH_LAYERS for leaf in ("weight", "bias")}
  seen = []   # every tensor name in the file, for the error message
  state = torch_pickle.load_state_dict(path, keep=lambda name: seen.append(name) or name in wanted)
  params = {}
  for name, i in zip(PARAM_NAMES, TORCH_LAYERS):
    w, b = f"features.{i}.weight", f"features.{i}.bias"
    for key in (w, b):
      if key not in state:
        raise WeightFileError(f"{path}: no tensor '{key}' (expected torchvision's VGG16 state dict, "
                         f"found {len(seen)} tensors: {seen[:4]}...)")
    if state[w].ndim != 4:
      raise WeightFileError(f"{path}: '{w}' has shape {state[w].shape}, expected a conv kernel [O, I, 3, 3]")
    params[name] = {"kernel": state[w].astype(np.float32).transpose(2, 3, 1, 0),   # OIHW -> HWIO
                    "bias": state[b].astype(np.float32)}
  return Vgg16Weights(params, TORCHVISION_MEAN, TORCHVISION_STD, "torchvision")


def _h5_str(x) -> str:
  return x.decode("utf8") if isinstance(x, bytes) else str(x)


def _keras_layer_weights(root, layer: str, path: str) -> tuple[np.ndarray, np.ndarray]:
  """(kernel, bias) of one layer in any of Keras's HDF5 weight layouts.

  Keras 1/2 (`save_weights` and the `keras.applications` files): the layer group
  carries a `weight_names` attribute, e.g. `block1_conv1_W_1:0`, `block1_conv1_b_1:0`
  (Keras 1) or `block1_conv1/kernel:0`, `block1_conv1/bias:0` (Keras 2), each a
  path under the layer group.  Keras 3 (`.weights.h5`): `layers/<name>/vars/{0,1}`.
  """
  if layer in root and "weight_names" in root[layer].attrs:
    g = root[layer]
    names = [_h5_str(n) for n in g.attrs["weight_names"]]
    if len(names) != 2:
      raise WeightFileError(f"{path}: layer '{layer}' holds {len(names)} weights {names}, expected kernel and bias")
    kernel = [n for n in names if n.split("/")[-1].startswith(("kernel", f"{layer}_W"))]
    bias = [n for n in names if n.split("/")[-1].startswith(("bias", f"{layer}_b"))]
    if len(kernel) != 1 or len(bias) != 1:
      raise WeightFileError(f"{path}: cannot tell kernel from bias in layer '{layer}': {names}")
    return np.asarray(g[kernel[0]]), np.asarray(g[bias[0]])
  if "layers" in root and layer in root["layers"] and "vars" in root["layers"][layer]:
    v = root["layers"][layer]["vars"]
    return np.asarray(v["0"]), np.asarray(v["1"])
  found = list(root.attrs["layer_names"]) if "layer_names" in root.attrs else list(root.keys())
  raise WeightFileError(f"{path}: no layer '{layer}' with weights (found {[_h5_str(n) for n in found][:6]}...)")


def read_keras_h5(path: str) -> Vgg16Weights:
  """Conv parameters from Keras's VGG16 HDF5 weights (`..._notop.h5` or the full file).

  Reads a `save_weights` file (layers at the top level) or a whole saved model
  (layers under `model_weights`).  Needs h5py.
  """
  try:
    import h5py
  except ImportError as e:
    raise ImportError("reading Keras .h5 weights needs h5py: `pip install h5py`") from e
  params = {}
  with h5py.File(path, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f
    for name, layer in zip(PARAM_NAMES, KERAS_LAYERS):
      kernel, bias = _keras_layer_weights(root, layer, path)
      params[name] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
  # Keras's VGG16 was trained on BGR input: flip conv_0's input channels to RGB.
  params["conv_0"]["kernel"] = params["conv_0"]["kernel"][:, :, ::-1].copy()
  return Vgg16Weights(params, KERAS_MEAN, KERAS_STD, "keras")


def weight_format(path: str | os.PathLike) -> str:
  """"keras" or "torch", told apart by content; WeightFileError for a missing
  file or one of neither format (checked before any work is done)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightFileError(f"no VGG16 weight file at {path}")
  with open(path, "rb") as f:
    head = f.read(8)
  if head == b"\x89HDF\r\n\x1a\n":
    return "keras"
  if zipfile.is_zipfile(path) or head[:1] == b"\x80":
    return "torch"
  raise WeightFileError(f"{path}: neither a torch file (torchvision's vgg16-397923af.pth) nor HDF5 "
                   "(Keras's vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5)")


def read_weights(path: str | os.PathLike) -> Vgg16Weights:
  """Reads a torchvision `.pth` or Keras `.h5` VGG16 weight file (told apart by content)."""
  path = os.fspath(path)
  return read_keras_h5(path) if weight_format(path) == "keras" else read_torchvision(path)


# --------------------------------------------------------------------------- fitting

def fold_normalization(kernel: np.ndarray, bias: np.ndarray, mean, std) -> tuple[np.ndarray, np.ndarray]:
  """Folds (x - mean) / std into a first conv so that it takes raw input in [0, 1].

  kernel [kh, kw, C, O], bias [O], mean/std [C].  Exact wherever the window lies
  inside the image (see the module docstring for the border).
  """
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  k = kernel / std[None, None, :, None]
  return k.astype(np.float32), (bias - np.einsum("hwco,c->o", k, mean)).astype(np.float32)


def fit_to_model(weights: Vgg16Weights, target: Mapping[str, Any],
                 fold_input_normalization: bool = True) -> dict[str, Any]:
  """The model's parameter tree with `conv_0` .. `conv_12` replaced by the weights.

  Args:
    weights: from `read_weights`.
    target: the model's params (arrays or `jax.ShapeDtypeStruct`s), holding
      `conv_0` .. `conv_12` at its top level; other entries (the head) are
      returned unchanged.
    fold_input_normalization: fold the source's mean/std into `conv_0` (the
      model then takes raw [0, 1] input); False leaves the normalisation to the
      caller.
  Returns:
    A new dict like `target`, conv entries as float32 numpy arrays.
  Raises:
    ValueError naming the parameter, the expected and the found shape.
  """
  missing = [n for n in PARAM_NAMES if n not in target]
  if missing:
    raise WeightFileError(f"the model has no parameters {missing} (VGG16's 13 convs are conv_0..conv_12; "
                     f"its top-level entries are {sorted(target)})")
  out = dict(target)
  for name in PARAM_NAMES:
    kernel, bias = weights.params[name]["kernel"], weights.params[name]["bias"]
    want_k, want_b = tuple(target[name]["kernel"].shape), tuple(target[name]["bias"].shape)
    if name == "conv_0":
      if fold_input_normalization:
        kernel, bias = fold_normalization(kernel, bias, weights.mean, weights.std)
      if len(want_k) == 4 and want_k[2] == 1 and kernel.shape[2] == 3:
        kernel = kernel.sum(axis=2, keepdims=True)   # gray replicated into RGB
    if kernel.shape != want_k:
      raise WeightFileError(f"{weights.source} VGG16 weights: {name}/kernel has shape {kernel.shape}, "
                       f"the model expects {want_k}")
    if bias.shape != want_b:
      raise WeightFileError(f"{weights.source} VGG16 weights: {name}/bias has shape {bias.shape}, "
                       f"the model expects {want_b}")
    out[name] = {**target[name], "kernel": kernel, "bias": bias}
  return out


def load_into(path: str | os.PathLike, target: Mapping[str, Any],
              fold_input_normalization: bool = True) -> dict[str, Any]:
  """`fit_to_model(read_weights(path), target, ...)`: the model's params with ImageNet convs."""
  return fit_to_model(read_weights(path), target, fold_input_normalization)
