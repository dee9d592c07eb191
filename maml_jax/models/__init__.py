"""Model registry: `build_model(name, ways, impl, width, precision)`, and `model_for(config)`."""
import functools

from maml_jax.errors import UserError
from maml_jax.models.convnets import VGG16, Conv4, Scratch7
from maml_jax.models.layers import CONV_IMPLS, default_conv_impl
from maml_jax.models.precision import DTYPES, MixedPrecision

MODELS = ("conv4", "conv4-pool", "scratch7", "vgg16", "tiny")


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
  impl = default_conv_impl() if impl == "auto" else impl
  if name == "conv4":
    return Conv4(ways, features=int(64 * width), impl=impl)
  if name == "conv4-pool":
    return Conv4(ways, features=int(32 * width), pool=True, impl=impl)
  if name == "scratch7":
    return Scratch7(ways, features=int(64 * width), impl=impl)
  if name == "vgg16":
    return VGG16(ways, width=width, impl=impl)
  if name == "tiny":   # for tests: two strided blocks of 8 filters
    return Conv4(ways, features=8, impl=impl)
  raise UserError(f"unknown model {name!r}; choose from {MODELS}")


@functools.lru_cache(maxsize=None)
def model_for(cfg):
  """The network of a run configuration (`maml_jax.config.Config`); one object per
  configuration, so that caches keyed on the model (compiled adapt steps) hit."""
  return build_model(cfg.model, cfg.ways, cfg.conv_impl, cfg.width, cfg.precision)
