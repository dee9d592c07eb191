"""The networks: MAML's conv4, the paper's scratch7 (b) and vgg16 (a).

Each is a Flax Linen module used as a pure function:
`model.apply({"params": p}, x, stat_mask=None) -> logits`, with x float32
[B, H, W, C] and logits [B, ways].  `stat_mask` (float [B]) restricts the
batch-norm statistics to the marked rows (see `layers.batch_stats_norm`).
"""
from __future__ import annotations

import math

import flax.linen as nn

from maml_jax.models.layers import Conv, ConvBlock, MLPHead, max_pool


class Conv4(nn.Module):
  """MAML's 4-block net.

  Omniglot variant (`pool=False`): 4 x [3x3 conv stride 2, `features` filters,
  BN, ReLU] then a linear head.  miniImageNet variant (`pool=True`, 32
  filters): stride 1 and a 2x2 max-pool after each block.
  """
  ways: int
  features: int = 64
  pool: bool = False
  impl: str = "gemm"

  @nn.compact
  def __call__(self, x, stat_mask=None):
    for i in range(4):
      x = ConvBlock(self.features, stride=1 if self.pool else 2, pool=self.pool, impl=self.impl,
                    name=f"block_{i}")(x, stat_mask)
    return MLPHead((), self.ways, name="head")(x)


def scratch7_pools(size: int) -> int:
  """Blocks followed by a 2x2 max-pool: the first min(6, log2(size))."""
  return min(6, int(math.log2(size)))


class Scratch7(nn.Module):
  """The paper's network (b): 7 x [3x3 conv 64, BN, ReLU], a 2x2 max-pool after
  the first min(6, log2(H)) blocks (64x64 -> 1x1), then FC 256 x 3 and the head."""
  ways: int
  features: int = 64
  hidden: tuple[int, ...] = (256, 256, 256)
  impl: str = "gemm"

  @nn.compact
  def __call__(self, x, stat_mask=None):
    pools = scratch7_pools(x.shape[1])
    for i in range(7):
      x = ConvBlock(self.features, pool=i < pools, impl=self.impl, name=f"block_{i}")(x, stat_mask)
    return MLPHead(self.hidden, self.ways, name="head")(x)


VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG16(nn.Module):
  """The paper's network (a): VGG16's 13 conv layers (ReLU, no batch norm, a 2x2
  max-pool after each of the 5 stages), then FC 256 x 3 and the head.

  Conv parameters are `conv_0` .. `conv_12` (`kernel` HWIO, `bias`), the names
  the ImageNet weight converters fill.  The paper freezes them and meta-learns
  the head only (the `paper-pretrained` preset's masks).  `width` scales the
  filter counts (1.0 = VGG16; smaller for tests).
  """
  ways: int
  hidden: tuple[int, ...] = (256, 256, 256)
  width: float = 1.0
  impl: str = "gemm"

  @nn.compact
  def __call__(self, x, stat_mask=None):
    del stat_mask  # no batch norm in VGG16
    k = 0
    for features, layers in VGG16_STAGES:
      for _ in range(layers):
        x = nn.relu(Conv(max(1, int(features * self.width)), impl=self.impl, name=f"conv_{k}")(x))
        k += 1
      if x.shape[1] >= 2:
        x = max_pool(x, 2, self.impl)
    return MLPHead(self.hidden, self.ways, name="head")(x)
