"""The combined meta-dataset: class splits, size/channel fitting and the uint8
cache.  Image folders here are SYNTHETIC (random PIL images made by the test);
CIFAR-100 comes from tfds.testing.mock_data (random SYNTHETIC examples)."""
import json
import os
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from maml_jax.data import metadataset as md
from maml_jax.data.image_folder import ImageFolderError, fit_image
from maml_jax.data.class_images import ClassImages
from maml_jax.episodes import EpisodeSampler


def make_folder(root, classes=10, per_class=5, seed=0):
  """SYNTHETIC root/<class>/<images>: mixed sizes and modes (RGB, L, 16-bit)."""
  rng = np.random.default_rng(seed)
  for c in range(classes):
    d = os.path.join(root, f"synthetic_{c:02d}")
    os.makedirs(d, exist_ok=True)
    for k in range(per_class):
      h, w = rng.integers(12, 40, 2)
      if k % 3 == 0:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
      elif k % 3 == 1:
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
      else:
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
      im.save(os.path.join(d, f"img_{k}.png"))
  with open(os.path.join(root, "README.txt"), "w") as f:  # a stray file, not a class
    f.write("synthetic test images\n")
  return root


def _load(tmp_path, datasets=("folder",), **kw):
  kw = {"image_size": 8, "channels": 1, "workdir": str(tmp_path / "work"),
        "image_folder": str(tmp_path / "folder"), **kw}
  return md.load_meta_dataset(list(datasets), **kw)


def test_split_is_disjoint_complete_seeded_and_per_dataset():
  names = {"a": [f"c{i}" for i in range(100)], "b": [f"d{i}" for i in range(200)]}
  s = md.split_classes(names, 0, (0.64, 0.16, 0.20))
  assert [len(s[k]) for k in md.SPLITS] == [64 + 128, 16 + 32, 20 + 40]
  sets = [set(s[k]) for k in md.SPLITS]
  assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
  assert set().union(*sets) == {f"a/{c}" for c in names["a"]} | {f"b/{c}" for c in names["b"]}
  assert md.split_classes(names, 0, (0.64, 0.16, 0.20)) == s                 # stable
  assert md.split_classes(dict(reversed(names.items())), 0, (0.64, 0.16, 0.20)) == s
  assert md.split_classes(names, 1, (0.64, 0.16, 0.20)) != s                 # seeded
  # Each dataset is split on its own: dropping "b" leaves "a"'s split as it was.
  only_a = md.split_classes({"a": names["a"]}, 0, (0.64, 0.16, 0.20))
  assert all(only_a[k] == [c for c in s[k] if c.startswith("a/")] for k in md.SPLITS)


def test_fit_image_channels_and_size():
  rgb = np.array([[[200, 100, 50]]], np.uint8)
  gray = fit_image(rgb, 1, 1)
  assert abs(int(gray[0, 0, 0]) - (299 * 200 + 587 * 100 + 114 * 50) / 1000) <= 0.5  # ITU-R 601-2
  g = np.array([[7, 250]], np.uint8)
  assert np.array_equal(fit_image(g, 2, 3)[0], np.repeat(np.array([[7], [250]], np.uint8), 3, 1))
  deep = Image.fromarray(np.tile(np.array([[0, 257 * 100, 65535]], np.uint16), (3, 1)))  # 16-bit gray
  assert deep.mode.startswith("I;16")
  assert fit_image(deep, 3, 1)[..., 0].tolist() == [[0, 100, 255]] * 3
  flat = np.full((32, 32, 3), 90, np.uint8)
  assert np.array_equal(fit_image(flat, 64, 3), np.full((64, 64, 3), 90, np.uint8))
  checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  assert np.abs(fit_image(checker, 16, 1).astype(int) - 127).max() <= 2  # shrinking averages


def test_folder_meta_dataset_holds_the_fitted_images(tmp_path):
  make_folder(str(tmp_path / "folder"))
  out = _load(tmp_path, image_size=8, channels=3)
  assert [out[k].num_classes for k in md.SPLITS] == [6, 2, 2]
  all_names = [n for k in md.SPLITS for n in out[k].class_names]
  assert sorted(all_names) == [f"folder/synthetic_{c:02d}" for c in range(10)]
  for k in md.SPLITS:
    ci = out[k]
    assert isinstance(ci.images, np.memmap) and ci.images.shape[1:] == (8, 8, 3)
    for c, name in enumerate(ci.class_names):
      d = tmp_path / "folder" / name.split("/")[1]
      want = np.stack([fit_image(Image.open(d / f"img_{i}.png"), 8, 3) for i in range(5)])
      assert np.array_equal(ci.images[ci.class_start[c]:ci.class_start[c] + ci.class_count[c]], want)
  saved = json.load(open(tmp_path / "work" / "splits.json"))
  assert {k: sorted(saved[k]) for k in md.SPLITS} == {k: list(out[k].class_names) for k in md.SPLITS}
  # Episodes can be drawn from the cached split straight away.
  ep = EpisodeSampler(out["train"], tasks=2, ways=3, shots=2, queries=2, seed=0, on_device=False)(0)
  assert ep.support_x.shape == (2, 6, 8, 8, 3)


def test_cache_is_reused_and_rebuilt_when_a_source_changes(tmp_path):
  make_folder(str(tmp_path / "folder"))
  first = _load(tmp_path)
  npy = os.path.join(md.cache_path(["folder"], 8, 1, str(tmp_path / "work")), "train.npy")
  stamp = os.stat(npy).st_mtime_ns, os.stat(npy).st_ino
  second = _load(tmp_path)
  assert (os.stat(npy).st_mtime_ns, os.stat(npy).st_ino) == stamp  # reused, not rebuilt
  assert np.array_equal(np.asarray(second["train"].images), np.asarray(first["train"].images))

  name = first["train"].class_names[0].split("/")[1]
  path = tmp_path / "folder" / name / "img_0.png"
  Image.fromarray(np.full((20, 20), 33, np.uint8)).save(path)
  os.utime(path, ns=(stamp[0] + 10**9, stamp[0] + 10**9))
  third = _load(tmp_path)
  assert third["train"].class_names == first["train"].class_names   # same split
  assert np.array_equal(third["train"].images[0], np.full((8, 8, 1), 33, np.uint8))
  assert not np.array_equal(np.asarray(third["train"].images), np.asarray(first["train"].images))
  assert np.array_equal(np.asarray(third["val"].images), np.asarray(first["val"].images))


def test_workdir_split_contradictions_fail_clearly(tmp_path):
  make_folder(str(tmp_path / "folder"))
  _load(tmp_path)
  with pytest.raises(md.MetaDatasetError, match="split_seed=0 .* split_seed=3"):
    _load(tmp_path, split_seed=3)
  with pytest.raises(md.MetaDatasetError, match=r"splits the classes of \['folder'\], but this run asks"):
    _load(tmp_path, datasets=("omniglot", "folder"))
  os.makedirs(tmp_path / "folder" / "synthetic_new")
  Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "folder" / "synthetic_new" / "a.png")
  with pytest.raises(md.MetaDatasetError, match="classes of folder changed .*1 new, e.g. folder/synthetic_new"):
    _load(tmp_path)


def test_bad_requests_fail_clearly(tmp_path):
  with pytest.raises(md.MetaDatasetError, match="unknown dataset"):
    _load(tmp_path, datasets=("imagenet",))
  with pytest.raises(md.MetaDatasetError, match="proportions must be"):
    _load(tmp_path, proportions=(0.5, 0.5, 0.5))
  with pytest.raises(ImageFolderError, match="does not exist"):
    _load(tmp_path)
  os.makedirs(tmp_path / "folder" / "empty_class")
  with pytest.raises(ImageFolderError, match="empty_class has no images"):
    _load(tmp_path)
  (tmp_path / "folder" / "empty_class" / "bad.png").write_bytes(b"not a png")
  with pytest.raises(ImageFolderError, match="cannot read image .*bad.png"):
    _load(tmp_path, proportions=(1.0, 0.0, 0.0))


def test_empty_splits_are_allowed(tmp_path):
  make_folder(str(tmp_path / "folder"), classes=3)
  out = _load(tmp_path, proportions=(1.0, 0.0, 0.0))
  assert out["train"].num_classes == 3 and out["val"].num_classes == 0 and len(out["test"].images) == 0


def test_cifar100_and_folder_combined(tmp_path):
  from maml_jax.data import cifar100
  from tensorflow_datasets.core import splits as splits_lib
  make_folder(str(tmp_path / "folder"))
  # Real cifar100 metadata without records: the dataset counts as prepared and
  # mock_data (MockPolicy.USE_FILES) serves random examples for it.
  data_dir = str(tmp_path / "tfds")
  b = tfds.builder("cifar100", data_dir=data_dir, file_format="array_record")
  b.info.set_splits(splits_lib.SplitDict([splits_lib.SplitInfo(
      name=n, shard_lengths=[k], num_bytes=0, filename_template=None) for n, k in (("train", 500), ("test", 100))]))
  os.makedirs(b.data_dir)
  b.info.write_to_directory(b.data_dir)
  with tfds.testing.mock_data(num_examples=400, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir):
    out = _load(tmp_path, datasets=("folder", "cifar100"), image_size=16, channels=1, tfds_data_dir=data_dir)
    images, start, count, names = cifar100.load_cifar100(data_dir)
  n_cifar = sum(1 for k in md.SPLITS for n in out[k].class_names if n.startswith("cifar100/"))
  assert n_cifar == 100 and [out[k].num_classes for k in md.SPLITS] == [64 + 6, 16 + 2, 20 + 2]
  ci = out["test"]
  c = next(i for i, n in enumerate(ci.class_names) if n.startswith("cifar100/") and ci.class_count[i] > 0)
  label = names.index(ci.class_names[c].split("/", 1)[1])
  want = np.stack([fit_image(x, 16, 1) for x in images[start[label]:start[label] + count[label]]])
  assert np.array_equal(ci.images[ci.class_start[c]:ci.class_start[c] + ci.class_count[c]], want)


def test_omniglot_source_uses_the_reader_at_the_target_size(tmp_path, monkeypatch):
  """data.omniglot is replaced by a SYNTHETIC stand-in with its interface."""
  calls = []

  def load_omniglot(root=None, size=28):
    calls.append((root, size))
    rng = np.random.default_rng(0)
    per = [rng.integers(0, 256, (20, size, size, 1), dtype=np.uint8) for _ in range(10)]
    return ClassImages.from_per_class(per, [f"images_background/Synthetic/character{i:02d}" for i in range(10)])

  (tmp_path / "omni").mkdir()
  (tmp_path / "omni" / "images_background.zip").write_bytes(b"synthetic")
  monkeypatch.setitem(sys.modules, "maml_jax.data.omniglot",
                      types.SimpleNamespace(load_omniglot=load_omniglot))
  out = _load(tmp_path, datasets=("omniglot",), image_size=12, channels=3,
              omniglot_root=str(tmp_path / "omni"))
  assert calls and all(size == 12 for _, size in calls)
  names = sorted(n for k in md.SPLITS for n in out[k].class_names)
  assert names == [f"omniglot/images_background/Synthetic/character{i:02d}" for i in range(10)]
  x = out["train"].images
  assert x.shape[1:] == (12, 12, 3) and np.array_equal(x[..., 0], x[..., 2])
