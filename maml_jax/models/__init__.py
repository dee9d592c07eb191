"""Model registry: `build_model(name, ways, impl, width, precision)`, and `model_for(config)`;
`Embedding(model)`, a network without its output layer."""
import functools
from typing import Any, NamedTuple

import flax.linen as nn

from maml_jax.errors import UserError
from maml_jax.models.convnets import VGG16, Conv4, Scratch7
from maml_jax.models.feature_head import FeatureHead
from maml_jax.models.layers import CONV_IMPLS, default_conv_impl
from maml_jax.models.precision import DTYPES, MixedPrecision

# name -> (ways, width, conv impl) -> network.
BUILDERS = {
    "conv4": lambda ways, width, impl: Conv4(ways, features=int(64 * width), impl=impl),
    "conv4-pool": lambda ways, width, impl: Conv4(ways, features=int(32 * width), pool=True, impl=impl),
    "scratch7": lambda ways, width, impl: Scratch7(ways, features=int(64 * width), impl=impl),
    "vgg16": lambda ways, width, impl: VGG16(ways, width=width, impl=impl),
    "tiny": lambda ways, width, impl: Conv4(ways, features=8, impl=impl),   # for tests: 8 filters
    # The paper's 3x256 head on EfficientNet-Lite0's frozen 1280-d features
    # (the features are computed once per image, outside the network).
    "effnet_head": lambda ways, width, impl: FeatureHead(ways),
}
MODELS = tuple(BUILDERS)
# Networks whose input is a feature vector, not an image: name -> its length.
FEATURE_INPUTS = {"effnet_head": 1280}


def input_shape(cfg) -> tuple[int, ...]:
  """The shape of one input of the configuration's network: (S, S, C) images,
  or (D,) feature vectors."""
  if cfg.model in FEATURE_INPUTS:
    return (FEATURE_INPUTS[cfg.model],)
  return (cfg.image_size, cfg.image_size, cfg.channels)


def build_model(name: str, ways: int, impl: str = "auto", width: float = 1.0, precision: str = "float32"):
  """The named network with a `ways`-way head.

  `impl` picks the convolution formulation ("gemm", "xla", or "auto" for the
  fastest measured on this backend); the parameters are the same either way.
  `precision` "bfloat16" computes in bfloat16 on float32 parameters
  (`precision.MixedPrecision`); "float32" is the network itself.
  """
  if precision != "float32":
    if precision not in DTYPES:
      raise UserError(f"unknown precision {precision!r}; choose from float32, {', '.join(DTYPES)}")
    return MixedPrecision(build_model(name, ways, impl, width), DTYPES[precision])
  if name not in BUILDERS:
    raise UserError(f"unknown model {name!r}; choose from {MODELS}")
  return BUILDERS[name](ways, width, default_conv_impl() if impl == "auto" else impl)


@functools.lru_cache(maxsize=None)
def model_for(cfg):
  """The network of a run configuration (`maml_jax.config.Config`); one object per
  configuration, so that caches keyed on the model (compiled adapt steps) hit."""
  return build_model(cfg.model, cfg.ways, cfg.conv_impl, cfg.width, cfg.precision)


class Embedding(NamedTuple):
  """`model` without its output layer: `Embedding(model).apply({"params": p}, x,
  stat_mask=None)` -> float [B, D], the features that the output layer
  `head/out` (a Dense, last in every network here) reads, under the same
  parameters.

  The output layer is skipped by a Flax method interceptor at trace time, so
  the networks need no second entry point and their parameters stay as they
  are; `tests/test_algorithms.py` checks that the features times the output
  kernel plus its bias are the logits.
  """
  model: Any

  def apply(self, variables, x, stat_mask=None):
    def skip_output_layer(next_fun, args, kwargs, context):
      m = context.module
      if (context.method_name == "__call__" and isinstance(m, nn.Dense) and m.name == "out"
          and m.parent is not None and getattr(m.parent, "name", None) == "head"):
        return args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(skip_output_layer):
      return self.model.apply(variables, x, stat_mask)
