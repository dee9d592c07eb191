"""The fast layer formulations ("gemm") against XLA's reference ops ("xla"),
to second order, and batch norm with a statistics mask, in float64."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml_jax.models import layers
from maml_jax.models.layers import conv2d, max_pool

batch_stats_norm = jax.jit(layers.batch_stats_norm)

# float64 agreement: both formulations compute the same sums in a different order.
RTOL, ATOL = 1e-10, 1e-12


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


# (kernel, stride, padding, check second order).  Second-order graphs take a
# second or two each to compile, so they cover the two configurations the
# networks use: 3x3 stride 1 (scratch7, vgg16) and stride 2 (conv4), padding 1.
CONV_CASES = [(3, 1, 1, True), (3, 2, 1, True), (3, 2, 0, False), (3, 1, 0, False), (1, 1, 0, False),
              (1, 2, 0, False)]


@pytest.mark.parametrize("kernel_size,stride,padding,second_order", CONV_CASES)
def test_conv2d_gemm_matches_xla(x64, kernel_size, stride, padding, second_order):
  x = _normal(0, (2, 7, 9, 3))                    # odd sizes: strides leave a remainder
  k = _normal(1, (kernel_size, kernel_size, 3, 4))
  conv = functools.partial(conv2d, stride=stride, padding=padding)
  out_shape = (2, (7 + 2 * padding - kernel_size) // stride + 1, (9 + 2 * padding - kernel_size) // stride + 1, 4)
  r = _normal(2, out_shape)
  a, b = _normal(3, x.shape), _normal(4, k.shape)

  def f(impl, x, k):   # non-linear in the conv output, so second derivatives involve the conv
    return jnp.sum(jnp.tanh(conv(x, k, impl=impl)) * r)

  def g(impl, x, k):   # a non-linear function of both first derivatives
    gx, gk = jax.grad(f, argnums=(1, 2))(impl, x, k)
    return jnp.sum(jnp.sin(gx) * a) + jnp.sum(jnp.sin(gk) * b)

  @jax.jit
  def outputs(x, k):   # both formulations in one compilation
    return {impl: [conv(x, k, impl=impl)] + [jax.grad(functools.partial(order, impl), argnums=(0, 1))(x, k)
                                             for order in ((f, g) if second_order else (f,))]
            for impl in ("gemm", "xla")}

  out = outputs(x, k)
  assert out["gemm"][0].shape == out["xla"][0].shape == out_shape
  for got, want in zip(jax.tree.leaves(out["gemm"]), jax.tree.leaves(out["xla"])):
    assert np.abs(want).max() > 1e-3        # a real signal to compare
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * np.abs(want).max())


def test_conv2d_rejects_an_unknown_formulation():
  with pytest.raises(ValueError, match="unknown conv impl 'fft'"):
    conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="fft")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 3)])   # odd sizes drop the last row/column
def test_max_pool_gemm_matches_xla_to_second_order(x64, shape):
  x = _normal(5, shape)                                           # continuous values: no ties
  r = _normal(6, (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
  a = _normal(7, shape)
  f = lambda impl, x: jnp.sum(jnp.tanh(max_pool(x, 2, impl)) * r)
  g = lambda impl, x: jnp.sum(jnp.sin(jax.grad(functools.partial(f, impl))(x)) * a)
  out = jax.jit(lambda x: {impl: (max_pool(x, 2, impl), jax.grad(functools.partial(f, impl))(x),
                                  jax.grad(functools.partial(g, impl))(x))
                           for impl in ("gemm", "xla")})(x)
  np.testing.assert_array_equal(out["gemm"][0], out["xla"][0])
  for got, want in zip(out["gemm"][1:], out["xla"][1:]):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  # The gradient reaches exactly one input per window (the maximum).
  assert int(jnp.sum(out["gemm"][1] != 0)) == r.size


def _reference_norm(x, scale, bias, rows, eps=1e-5):
  """numpy batch norm with the mean and variance of x[rows] only."""
  x = np.asarray(x)
  mean = x[rows].mean(axis=(0, 1, 2))
  var = x[rows].var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(bias)


def test_batch_stats_norm_without_mask_is_batch_norm(x64):
  x = _normal(7, (5, 3, 4, 6)) * 3 + 1
  scale, bias = _normal(8, (6,)), _normal(9, (6,))
  y = batch_stats_norm(x, scale, bias)
  np.testing.assert_allclose(y, _reference_norm(x, scale, bias, np.arange(5)), rtol=1e-10, atol=1e-12)


def test_batch_stats_norm_with_mask_uses_the_masked_rows_only(x64):
  x = _normal(10, (6, 3, 4, 5)) * 2 - 1
  scale, bias = _normal(11, (5,)), _normal(12, (5,))
  mask = jnp.array([1., 0., 1., 1., 0., 0.])
  rows = np.flatnonzero(np.asarray(mask))
  y = batch_stats_norm(x, scale, bias, stat_mask=mask)
  # The masked rows are normalised exactly as a plain batch of those rows ...
  np.testing.assert_allclose(y[rows], batch_stats_norm(x[rows], scale, bias), rtol=1e-10, atol=1e-12)
  # ... and every row (masked or not) with the masked rows' statistics.
  np.testing.assert_allclose(y, _reference_norm(x, scale, bias, rows), rtol=1e-10, atol=1e-12)
  # So unmasked rows do not influence any output but their own.
  x2 = x.at[1].multiply(10.).at[4].add(3.)
  y2 = batch_stats_norm(x2, scale, bias, stat_mask=mask)
  keep = np.array([0, 2, 3, 5])
  np.testing.assert_array_equal(y2[keep], y[keep])
  # (Without the mask they would: the test can tell the two apart.)
  assert not np.allclose(batch_stats_norm(x2, scale, bias)[0], batch_stats_norm(x, scale, bias)[0])


@pytest.mark.parametrize("stride,cin,masked", [(1, 1, False), (2, 3, True)])
def test_conv_bn_folded_matches_conv_then_batch_norm_to_second_order(x64, stride, cin, masked):
  """Batch norm folded into the convolution (statistics from the patch
  covariance) against conv2d + bias, then batch_stats_norm; derivatives with
  respect to the input, kernel, conv bias, scale and shift, to second order."""
  x = _normal(20, (4, 7, 9, cin)) * 2 + 0.5
  k, cb = _normal(21, (3, 3, cin, 12)), _normal(22, (12,))
  scale, shift = 1 + 0.3 * _normal(23, (12,)), _normal(24, (12,))
  mask = jnp.array([1., 0., 1., 1.]) if masked else None
  out_shape = (4, (7 + 2 - 3) // stride + 1, (9 + 2 - 3) // stride + 1, 12)
  r = _normal(25, out_shape)
  args = (x, k, cb, scale, shift)
  extra = [_normal(26 + i, a.shape) for i, a in enumerate(args)]

  def fwd(folded, x, k, cb, scale, shift):
    if folded:   # the conv bias cancels, so the folded form takes none
      return layers.conv_bn_folded(x, k, scale, shift, stride=stride, stat_mask=mask)
    y = conv2d(x, k, stride=stride, impl="xla") + cb.reshape(1, 1, 1, -1)
    return layers.batch_stats_norm(y, scale, shift, stat_mask=mask)

  def f(folded, *a):
    return jnp.sum(jnp.tanh(fwd(folded, *a)) * r)

  def g(folded, *a):
    grads = jax.grad(functools.partial(f, folded), argnums=tuple(range(5)))(*a)
    return sum(jnp.sum(jnp.sin(d) * e) for d, e in zip(grads, extra))

  out = jax.jit(lambda *a: {folded: [fwd(folded, *a)] + [jax.grad(functools.partial(h, folded), argnums=tuple(range(5)))(*a)
                                                         for h in (f, g)]
                            for folded in (True, False)})(*args)
  assert out[True][0].shape == out_shape
  for got, want in zip(jax.tree.leaves(out[True]), jax.tree.leaves(out[False])):
    scale_ = max(np.abs(want).max(), 1e-3)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10 * scale_)
  # The conv bias's derivatives are zero in both (batch norm removes it).
  assert np.abs(out[False][1][2]).max() < 1e-10 and np.abs(out[False][2][2]).max() < 1e-10


@pytest.mark.parametrize("pool,stride", [(True, 1), (False, 2)])
def test_conv_block_folds_with_the_same_parameters(x64, pool, stride):
  """ConvBlock on grey images: "gemm" folds (and pools before the ReLU), "xla"
  does not; the parameter trees are the same and so are the outputs."""
  x = _normal(30, (3, 8, 8, 1))
  blocks = {impl: layers.ConvBlock(16, stride=stride, pool=pool, impl=impl) for impl in ("gemm", "xla")}
  assert layers.folds(3, 1, 16) and not layers.folds(3, 2, 16)
  params = blocks["xla"].init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, blocks["gemm"].init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
  params = jax.tree.map(lambda a: a + 0.1 * _normal(31, a.shape), params)   # non-trivial scale, shift, bias
  out = {impl: b.apply(params, x) for impl, b in blocks.items()}
  np.testing.assert_allclose(out["gemm"], out["xla"], rtol=1e-10, atol=1e-12)
