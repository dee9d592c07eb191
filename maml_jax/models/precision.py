"""Mixed precision: a network that computes in bfloat16 on float32 parameters.

`MixedPrecision(net)` has the network's `init` and `apply`.  `init` makes the
float32 parameters `net` makes; `apply` casts the parameters and the images
to bfloat16, so every convolution, matrix multiply and activation is
bfloat16, and returns the logits as float32, so the softmax loss, the inner
loop's parameter updates (the cast's gradient is float32) and the optimizer
state stay float32.  The layers keep batch-norm statistics in float32
(`layers.batch_stats_norm`, `layers.conv_bn_folded`): a mean over a whole
batch in bfloat16 loses most of its bits.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {"bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
  net: nn.Module
  dtype: Any = jnp.bfloat16

  def init(self, *args, **kw):
    """The float32 parameters of `net` (`net.init` unchanged)."""
    return self.net.init(*args, **kw)

  def apply(self, variables, x, *args, **kw):
    """`net.apply` in `dtype`: x [B, H, W, C] -> float32 logits [B, ways]."""
    cast = lambda a: a.astype(self.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return self.net.apply(jax.tree.map(cast, variables), x.astype(self.dtype), *args, **kw).astype(jnp.float32)
