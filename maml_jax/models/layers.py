"""Layers written for fast second-order differentiation on every backend.

XLA:CPU's convolution weight-gradient is an order of magnitude slower than a
matrix multiply of the same arithmetic, and the derivatives of convolution
gradients (what second-order MAML differentiates) are slower still.  So each
operation here has two formulations, chosen per backend by `conv_impl`:

* `"xla"`: `lax.conv_general_dilated` / `lax.reduce_window` (the reference).
* `"gemm"`: convolution as one matrix multiply over image patches.  Patches are
  built from shifted slices of the padded input, so every derivative, to any
  order, is again slices, pads, adds and matrix multiplies, all fast on CPU.

Max-pooling selects each window's winner with `where` (its derivative is an
elementwise selection, not XLA's select-and-scatter).  With "gemm", a block
whose patches are narrower than its output (a first layer) folds batch norm
into the convolution (`conv_bn_folded`).  Batch norm always normalises
with statistics of the current batch (MAML's convention) or, with `stat_mask`,
of the masked rows only.  `tests/test_layers.py` checks that the formulations
agree, including their second derivatives, and `tests/test_maml.py` that
whole networks give the same meta-gradient either way.
"""
from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("gemm", "xla")


def default_conv_impl() -> str:
  """The formulation that measured fastest on the current backend."""
  return "gemm" if jax.default_backend() == "cpu" else "xla"


def _out_size(size, k, stride, pad):
  return (size + 2 * pad - k) // stride + 1


def conv2d(x, kernel, *, stride=1, padding=1, impl="gemm"):
  """2-D convolution, NHWC.

  Args:
    x: float [B, H, W, Cin].
    kernel: float [kh, kw, Cin, Cout] (HWIO).
    stride, padding: symmetric, in pixels.
    impl: "gemm" or "xla" (same result to rounding).
  Returns:
    float [B, Ho, Wo, Cout].
  """
  if impl == "xla":
    return lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if impl != "gemm":
    raise ValueError(f"unknown conv impl {impl!r}; choose from {CONV_IMPLS}")
  return _conv_gemm(x, kernel, stride, padding)


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def _conv_gemm(x, kernel, stride, padding):
  """Convolution as one matrix multiply over patches.

  Wrapped in `jax.checkpoint`: the patches (kh*kw times the input's size) are
  rebuilt from the input in the backward pass instead of being stored, which
  keeps second-order MAML's memory near that of the activations themselves.
  """
  kh, kw, cin, cout = kernel.shape
  b = x.shape[0]
  patches = _patches(x, kh, kw, stride, padding)                       # [B, Ho, Wo, kh*kw*Cin]
  _, ho, wo, _ = patches.shape
  out = patches.reshape(b * ho * wo, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
  return out.reshape(b, ho, wo, cout)


def _patches(x, kh, kw, stride, padding):
  """Image patches [B, Ho, Wo, kh*kw*Cin] (row-major over kh, kw, then Cin,
  matching an HWIO kernel reshaped to [kh*kw*Cin, Cout]), from shifted slices."""
  b, h, w, cin = x.shape
  ho, wo = _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x
  cols = [lax.slice(xp, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, cin),
                    (1, stride, stride, 1))
          for i in range(kh) for j in range(kw)]
  return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]


def max_pool(x, window=2, impl="gemm"):
  """Non-overlapping max-pooling with VALID padding, NHWC: [B,H,W,C] -> [B,H//w,W//w,C].

  "gemm": the window's elements are strided slices; the winner of each window
  is chosen once, by an `argmax` outside differentiation, and selected with
  `where`.  So every derivative, to any order, routes through that one choice.
  (A max reduction's own derivative re-tests `x == max(x)`; XLA:CPU, jaxlib
  0.10.2, fuses the two sides of that test differently when tasks are batched
  with `vmap`, and the meta-gradient came out 36-107% wrong.)
  """
  if impl == "xla":
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, window, window, 1), "VALID")
  b, h, w, c = x.shape
  ho, wo = h // window, w // window
  parts = [lax.slice(x, (0, i, j, 0), (b, i + window * (ho - 1) + 1, j + window * (wo - 1) + 1, c),
                     (1, window, window, 1))
           for i in range(window) for j in range(window)]                      # each [B, Ho, Wo, C]
  winner = jnp.argmax(lax.stop_gradient(jnp.stack(parts, axis=-1)), axis=-1)  # [B, Ho, Wo, C]
  out = parts[-1]
  for k in range(len(parts) - 2, -1, -1):
    out = jnp.where(winner == k, parts[k], out)
  return out


def batch_stats_norm(x, scale, bias, stat_mask=None, eps=1e-5):
  """Batch norm over all but the last axis, with statistics of this batch.

  Args:
    x: float [B, ..., C].
    scale, bias: float [C] or None.
    stat_mask: optional float [B]; statistics are taken over rows with weight 1
      only (e.g. the support rows, so that a query image's output does not
      depend on the other queries).
  """
  axes = tuple(range(x.ndim - 1))
  per_channel = (1,) * (x.ndim - 1) + (-1,)
  out_dtype = x.dtype
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))   # bfloat16 sums over a batch lose too many bits
  if stat_mask is None:
    mean = x.mean(axes, keepdims=True)
    var = jnp.square(x - mean).mean(axes, keepdims=True)
  else:
    w = stat_mask.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    n = w.sum() * (x[0].size // x.shape[-1])
    mean = (x * w).sum(axes, keepdims=True) / n
    var = (jnp.square(x - mean) * w).sum(axes, keepdims=True) / n
  y = (x - mean) * lax.rsqrt(var + eps)
  if scale is not None:
    y = y * scale.reshape(per_channel)
  if bias is not None:
    y = y + bias.reshape(per_channel)
  return y.astype(out_dtype)


class Conv(nn.Module):
  """3x3 (by default) convolution with bias, He-normal initialised."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 1
  impl: str = "gemm"

  @nn.compact
  def weights(self, cin: int, dtype):
    """(kernel [k, k, cin, features], bias [features]), created on first use."""
    k = self.param("kernel", nn.initializers.he_normal(),
                   (self.kernel_size, self.kernel_size, cin, self.features), dtype)
    b = self.param("bias", nn.initializers.zeros, (self.features,), dtype)
    return k, b

  def __call__(self, x):
    # float32 parameters, or float64 next to float64 inputs (x64 tests).
    k, b = self.weights(x.shape[-1], jnp.promote_types(x.dtype, jnp.float32))
    return conv2d(x, k, stride=self.stride, padding=self.padding, impl=self.impl) + b.reshape(1, 1, 1, -1)


class BatchStatNorm(nn.Module):
  """Batch norm on the current batch's statistics, learnable scale and shift.

  There are no running averages: MAML normalises with the statistics of the
  batch it is given, in both loops (pass `stat_mask` to restrict them).
  """
  eps: float = 1e-5

  @nn.compact
  def weights(self, c: int, dtype):
    """(scale [c], bias [c]), created on first use."""
    return (self.param("scale", nn.initializers.ones, (c,), dtype),
            self.param("bias", nn.initializers.zeros, (c,), dtype))

  def __call__(self, x, stat_mask: Optional[jax.Array] = None):
    scale, bias = self.weights(x.shape[-1], jnp.promote_types(x.dtype, jnp.float32))
    return batch_stats_norm(x, scale, bias, stat_mask, self.eps)


def folds(kernel_size: int, cin: int, features: int) -> bool:
  """Whether `conv_bn_folded` is the cheaper way to compute conv -> batch norm:
  when a patch is no wider than the output (a first layer on grey or RGB
  images), its [k*k*cin]^2 covariance costs less than the convolution."""
  return kernel_size * kernel_size * cin <= features


def conv_bn_folded(x, kernel, scale, bias, *, stride=1, padding=1, stat_mask=None, eps=1e-5):
  """`batch_stats_norm(conv2d(x, kernel) + b, scale, bias)` as one matrix multiply.

  The conv output is y = P k + b over patch rows P, so its batch mean is
  mean(P) k + b and its variance per channel is diag(k^T cov(P) k).  The batch
  norm therefore folds into the kernel, and the conv bias b cancels, exactly
  as in the unfolded form.  The statistics come from the [k*k*cin]^2 patch
  covariance instead of the [B, Ho, Wo, Cout] output: on a first layer of 64
  filters the output is 7 times wider than a grey patch (2.4 times an RGB
  one), and when x is data (no gradient) the covariance is a constant of the
  inner loop.  No batch-norm pass, or any of its derivatives, touches the
  full-resolution output.

  Args:
    x: float [B, H, W, Cin]; kernel: [kh, kw, Cin, Cout]; scale, bias: [Cout].
    stat_mask: optional float [B] (see `batch_stats_norm`).
  Returns:
    float [B, Ho, Wo, Cout].
  """
  kh, kw, cin, cout = kernel.shape
  b, h, w, _ = x.shape
  ho, wo = _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)
  # Statistics in float32 at least (bfloat16 inputs under mixed precision); the
  # matrix multiply of the output in the input's precision.
  rows = _patches(x, kh, kw, stride, padding).reshape(b, ho * wo, kh * kw * cin)
  rows = rows.astype(jnp.promote_types(rows.dtype, jnp.float32))
  wts = jnp.ones((b,), rows.dtype) if stat_mask is None else stat_mask.astype(rows.dtype)
  wts = wts.reshape(b, 1, 1)
  n = wts.sum() * (ho * wo)
  centred = rows - (rows * wts).sum((0, 1), keepdims=True) / n           # [B, Ho*Wo, K]
  flat = centred.reshape(-1, kh * kw * cin)
  cov = flat.T @ (flat * jnp.repeat(wts.reshape(b), ho * wo)[:, None]) / n  # [K, K]
  k2 = kernel.reshape(kh * kw * cin, cout)
  var = jnp.sum(k2 * (cov @ k2), axis=0, keepdims=True)                  # [1, Cout]
  folded = k2 * (scale.reshape(1, -1) * lax.rsqrt(var + eps))
  out = flat.astype(x.dtype) @ folded.astype(x.dtype) + bias.reshape(1, -1).astype(x.dtype)
  return out.reshape(b, ho, wo, cout)


class ConvBlock(nn.Module):
  """conv -> batch norm -> ReLU [-> 2x2 max-pool].

  With `impl="gemm"`: the batch norm folds into the convolution where that is
  cheaper (`folds`), and the max-pool comes before the ReLU (the two commute,
  as ReLU is monotone), so the ReLU and its derivatives touch a quarter of
  the elements.
  """
  features: int = 64
  stride: int = 1
  pool: bool = False
  impl: str = "gemm"

  @nn.compact
  def __call__(self, x, stat_mask=None):
    conv, bn = Conv(self.features, stride=self.stride, impl=self.impl, name="conv"), BatchStatNorm(name="bn")
    if self.impl == "gemm" and folds(conv.kernel_size, x.shape[-1], self.features):
      dtype = jnp.promote_types(x.dtype, jnp.float32)
      kernel, _ = conv.weights(x.shape[-1], dtype)    # the conv bias cancels in batch norm
      scale, bias = bn.weights(self.features, dtype)
      x = conv_bn_folded(x, kernel, scale, bias, stride=self.stride, padding=conv.padding,
                         stat_mask=stat_mask, eps=bn.eps)
    else:
      x = bn(conv(x), stat_mask)
    if self.impl == "gemm":   # pool first: the ReLU then touches a quarter of the elements
      return nn.relu(max_pool(x, 2, self.impl) if self.pool else x)
    x = nn.relu(x)
    return max_pool(x, 2, self.impl) if self.pool else x


class MLPHead(nn.Module):
  """`hidden` ReLU layers, then the `ways`-way linear output."""
  hidden: tuple[int, ...]
  ways: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for i, h in enumerate(self.hidden):
      x = nn.relu(nn.Dense(h, name=f"fc_{i}")(x))
    return nn.Dense(self.ways, name="out")(x)
