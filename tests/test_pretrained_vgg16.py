"""VGG16 weight converters on small files in torchvision's and Keras's real layouts.

The files have VGG16's real key names and layer structure at 1/16 of its widths
(the project's `vgg16` model at width 1/16), so they are a few kilobytes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml_jax.models import build_model
from maml_jax.pretrained import torch_writer, vgg16_weights as vw

WIDTH = 1 / 16
WIDTHS = tuple(max(1, int(w * WIDTH)) for w in vw.WIDTHS)


def _model_params(in_channels):
  model = build_model("vgg16", ways=5, width=WIDTH)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, in_channels)))["params"]


def _hwio_weights(seed=0):
  """Random VGG16-structured conv weights, HWIO, for RGB input."""
  rng = np.random.RandomState(seed)
  shapes = vw.conv_shapes(3, WIDTHS)
  return {n: {"kernel": rng.randn(*s["kernel"]).astype(np.float32),
              "bias": rng.randn(*s["bias"]).astype(np.float32)} for n, s in shapes.items()}


def _write_torchvision(path, hwio, legacy):
  state = {}
  for name, i in zip(vw.PARAM_NAMES, vw.TORCH_LAYERS):
    state[f"features.{i}.weight"] = hwio[name]["kernel"].transpose(3, 2, 0, 1)   # HWIO -> OIHW
    state[f"features.{i}.bias"] = hwio[name]["bias"]
  state["classifier.0.weight"] = np.ones((6, WIDTHS[-1]), np.float32)   # skipped by the reader
  state["classifier.0.bias"] = np.ones(6, np.float32)
  torch_writer.save_state_dict(state, path, legacy=legacy, archive_name="vgg16-397923af")


def _write_keras(path, hwio, style, bgr_first=True):
  """A Keras VGG16 weight file: 'keras1' (`_W_1:0` names, top level, as
  keras.applications ships it), 'keras2' (`<layer>/kernel:0`) or 'model'
  (a whole saved model: layers under `model_weights`)."""
  h5py = pytest.importorskip("h5py")
  layer_names = ["input_1"]
  for b, n in enumerate((2, 2, 3, 3, 3), 1):
    layer_names += [f"block{b}_conv{c}" for c in range(1, n + 1)] + [f"block{b}_pool"]
  with h5py.File(path, "w") as f:
    root = f.create_group("model_weights") if style == "model" else f
    root.attrs["layer_names"] = [n.encode() for n in layer_names]
    root.attrs["backend"] = b"tensorflow"
    convs = dict(zip(vw.KERAS_LAYERS, vw.PARAM_NAMES))
    for layer in layer_names:
      g = root.create_group(layer)
      if layer not in convs:
        g.attrs["weight_names"] = np.array([], dtype="S1")
        continue
      kernel, bias = hwio[convs[layer]]["kernel"], hwio[convs[layer]]["bias"]
      if layer == "block1_conv1" and bgr_first:
        kernel = kernel[:, :, ::-1]   # Keras's VGG16 takes BGR
      names = ([f"{layer}_W_1:0", f"{layer}_b_1:0"] if style == "keras1"
               else [f"{layer}/kernel:0", f"{layer}/bias:0"])
      g.attrs["weight_names"] = [n.encode() for n in names]
      g[names[0]] = kernel
      g[names[1]] = bias


@pytest.mark.parametrize("legacy", [True, False])
def test_torchvision_file_maps_by_name_and_transposes(tmp_path, legacy):
  hwio = _hwio_weights()
  path = tmp_path / "vgg16-397923af.pth"
  _write_torchvision(path, hwio, legacy)
  w = vw.read_weights(path)
  assert w.source == "torchvision" and w.mean == vw.TORCHVISION_MEAN
  for name in vw.PARAM_NAMES:
    np.testing.assert_array_equal(w.params[name]["kernel"], hwio[name]["kernel"])
    np.testing.assert_array_equal(w.params[name]["bias"], hwio[name]["bias"])
  params = vw.fit_to_model(w, _model_params(3), fold_input_normalization=False)
  np.testing.assert_array_equal(params["conv_7"]["kernel"], hwio["conv_7"]["kernel"])
  assert "head" in params   # the rest of the tree is kept


@pytest.mark.parametrize("style", ["keras1", "keras2", "model"])
def test_keras_h5_layouts_give_rgb_kernels(tmp_path, style):
  hwio = _hwio_weights(1)
  path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
  _write_keras(path, hwio, style)
  w = vw.read_weights(path)
  assert w.source == "keras"
  for name in vw.PARAM_NAMES:   # conv_0 comes back RGB although stored BGR
    np.testing.assert_array_equal(w.params[name]["kernel"], hwio[name]["kernel"])
    np.testing.assert_array_equal(w.params[name]["bias"], hwio[name]["bias"])


def test_keras_caffe_preprocessing_is_restated_for_rgb_unit_input():
  x = np.random.RandomState(0).rand(5, 3)   # RGB in [0, 1]
  caffe = (x * 255)[:, ::-1] - np.array([103.939, 116.779, 123.68])   # BGR, mean subtracted
  ours = (x - np.array(vw.KERAS_MEAN)) / np.array(vw.KERAS_STD)
  np.testing.assert_allclose(ours, caffe[:, ::-1], atol=1e-9)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
  path = tmp_path / "vgg16.pth"
  _write_torchvision(path, _hwio_weights(), legacy=False)
  model = build_model("vgg16", ways=5, width=WIDTH / 2)   # half the file's widths
  target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  with pytest.raises(ValueError, match=r"conv_0/kernel has shape \(3, 3, 3, 4\), the model expects \(3, 3, 3, 2\)"):
    vw.load_into(path, target)


def test_wrong_file_contents_are_reported(tmp_path):
  path = tmp_path / "other.pth"
  torch_writer.save_state_dict({"fc.weight": np.zeros((2, 2), np.float32)}, path)
  with pytest.raises(ValueError, match="no tensor 'features.0.weight'"):
    vw.read_weights(path)
  with pytest.raises(ValueError, match="no parameters"):
    vw.fit_to_model(vw.Vgg16Weights(_hwio_weights(), (0,) * 3, (1,) * 3, "test"), {"conv_0": {}})


def _conv(x, k, b):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b.reshape(1, 1, 1, -1)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_folded_first_conv_on_raw_input_equals_normalised_rgb(tmp_path, in_channels):
  """The fitted conv_0 on raw [0, 1] pixels (gray or RGB) = the source network's
  conv_0 on the normalised RGB image (gray replicated), inside the image."""
  hwio = _hwio_weights(2)
  path = tmp_path / "vgg16.pth"
  _write_torchvision(path, hwio, legacy=True)
  params = vw.load_into(path, _model_params(in_channels))
  assert params["conv_0"]["kernel"].shape == (3, 3, in_channels, WIDTHS[0])
  x = np.random.RandomState(3).rand(2, 9, 9, in_channels).astype(np.float32)
  rgb = np.repeat(x, 3, axis=-1) if in_channels == 1 else x
  normalised = (rgb - np.array(vw.TORCHVISION_MEAN, np.float32)) / np.array(vw.TORCHVISION_STD, np.float32)
  want = _conv(normalised, hwio["conv_0"]["kernel"], hwio["conv_0"]["bias"])
  got = _conv(x, params["conv_0"]["kernel"], params["conv_0"]["bias"])
  np.testing.assert_allclose(got[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
