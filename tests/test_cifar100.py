"""CIFAR-100 reading through tfds.data_source, on tfds.testing.mock_data (random
SYNTHETIC examples; no CIFAR-100 copy and no TensorFlow are needed)."""
import importlib.util
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import splits as splits_lib

from maml_jax.data import cifar100

NUM_MOCK = 1500


def write_metadata(data_dir, file_format="array_record", splits=(("train", 50000), ("test", 10000))):
  """Writes real cifar100 dataset_info.json/features.json (no records), so the
  dataset counts as prepared and mock_data (MockPolicy.USE_FILES) reads them."""
  b = tfds.builder("cifar100", data_dir=data_dir, file_format=file_format)
  b.info.set_splits(splits_lib.SplitDict([
      splits_lib.SplitInfo(name=n, shard_lengths=[k], num_bytes=0, filename_template=None)
      for n, k in splits]))
  os.makedirs(b.data_dir, exist_ok=True)
  b.info.write_to_directory(b.data_dir)
  return data_dir


@pytest.fixture
def mock_cifar(tmp_path):
  data_dir = write_metadata(str(tmp_path / "tfds"))
  with tfds.testing.mock_data(num_examples=NUM_MOCK, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=data_dir):
    yield data_dir


def test_load_groups_every_record_under_its_label(mock_cifar):
  images, start, count, names = cifar100.load_cifar100(mock_cifar)
  assert images.shape == (NUM_MOCK, 32, 32, 3) and images.dtype == np.uint8
  assert len(names) == 100 and count.sum() == NUM_MOCK
  assert np.array_equal(start, np.concatenate([[0], np.cumsum(count)[:-1]]))
  ds = cifar100.data_source(data_dir=mock_cifar)
  records = [ds[i] for i in range(len(ds))]
  for c in (0, 17, 99):
    want = [r["image"] for r in records if int(r["label"]) == c]
    got = images[start[c]:start[c] + count[c]]
    assert len(want) == count[c] > 0
    assert np.array_equal(np.stack(want), got)  # same images, record order kept


def test_not_prepared_says_how(tmp_path):
  with pytest.raises(cifar100.NotPreparedError) as err:
    cifar100.load_cifar100(str(tmp_path))
  msg = str(err.value)
  assert str(tmp_path) in msg
  assert "python run.py prepare-data --dataset cifar100" in msg
  assert "--manual-dir DIR" in msg and "cifar-100-binary.tar.gz" in msg


def test_prepared_without_random_access_is_refused(tmp_path):
  data_dir = write_metadata(str(tmp_path), file_format="tfrecord")
  with pytest.raises(cifar100.NotPreparedError, match="prepared as tfrecord"):
    cifar100.data_source(data_dir=data_dir)


def test_prepare_checks_the_archive_before_building(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(cifar100.Cifar100Error, match="no cifar-100-binary.tar.gz in"):
    cifar100.prepare_cifar100(str(tmp_path / "tfds"), str(manual))
  archive = manual / cifar100.ARCHIVE
  archive.write_bytes(b"\0" * 1000)
  with pytest.raises(cifar100.Cifar100Error, match="has 1,000 bytes; the official archive has 168,513,733"):
    cifar100.prepare_cifar100(str(tmp_path / "tfds"), str(manual))
  with open(archive, "r+b") as f:  # right size (sparse), wrong content
    f.truncate(cifar100.ARCHIVE_BYTES)
  with pytest.raises(cifar100.Cifar100Error, match="has sha256 .*damaged or a different file"):
    cifar100.prepare_cifar100(str(tmp_path / "tfds"), str(manual))


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_prepare_without_tensorflow_says_how(tmp_path, capsys):
  from maml_jax.cli import main
  assert main(["prepare-data", "--dataset", "cifar100", "--data-dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "needs TensorFlow" in err and "pip install" in err
  assert not cifar100.builder(str(tmp_path)).is_prepared()
