"""CIFAR-100 through TFDS's standard `cifar100` builder.

Reading needs no TensorFlow: the prepared dataset is stored as array_record and
read with `tfds.data_source` (random access).  Preparing does need TensorFlow,
because the TFDS builder encodes every image with `tf.image.encode_png`; it is
an optional extra, used once:

    python run.py prepare-data --dataset cifar100                      # downloads
    python run.py prepare-data --dataset cifar100 --manual-dir DIR     # offline

Offline, DIR holds the official `cifar-100-binary.tar.gz` (168,513,733 bytes,
sha256 58a81ae1...40d8ec); its size and checksum are checked before anything is
built (TFDS checks them again).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds
from .errors import DataError
from .progress import progress

NAME = "cifar100"
ARCHIVE = "cifar-100-binary.tar.gz"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
ARCHIVE_BYTES = 168_513_733
ARCHIVE_SHA256 = "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"
SPLIT = "train+test"      # all 600 images of each class (500 train + 100 test)


class NotPreparedError(DataError):
  """CIFAR-100 has not been prepared (as array_record) in the TFDS data directory."""


class Cifar100Error(DataError):
  """The CIFAR-100 archive is missing or damaged, or preparing cannot run."""


def _where(data_dir) -> str:
  return data_dir or "the default TFDS data directory (~/tensorflow_datasets or $TFDS_DATA_DIR)"


def not_prepared_message(data_dir) -> str:
  dd = f" --data-dir {data_dir}" if data_dir else ""
  return (f"CIFAR-100 is not prepared in {_where(data_dir)}. Prepare it once (needs TensorFlow: "
          f"pip install tensorflow) with:  python run.py prepare-data --dataset cifar100{dd}  "
          f"(downloads {ARCHIVE_URL}), or offline, with {ARCHIVE} in a folder DIR:  "
          f"python run.py prepare-data --dataset cifar100 --manual-dir DIR{dd}")


def builder(data_dir: str | None = None, file_format: str | None = None):
  kwargs = {"file_format": file_format} if file_format else {}
  return tfds.builder(NAME, data_dir=data_dir, **kwargs)


def _has_random_access(b) -> bool:
  return "array_record" in {f.value for f in b.info.available_file_formats()}


def check_archive(manual_dir: str) -> str:
  """Checks `<manual_dir>/cifar-100-binary.tar.gz` by size and sha256; returns its path."""
  path = os.path.join(manual_dir, ARCHIVE)
  if not os.path.isfile(path):
    raise Cifar100Error(f"no {ARCHIVE} in {manual_dir}; get it from {ARCHIVE_URL}")
  size = os.path.getsize(path)
  if size != ARCHIVE_BYTES:
    raise Cifar100Error(f"{path} has {size:,} bytes; the official archive has {ARCHIVE_BYTES:,} "
                        "(truncated or a different file)")
  h = hashlib.sha256()
  with open(path, "rb") as f, progress(total=size, unit="B", unit_scale=True, desc=f"sha256 {ARCHIVE}") as bar:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
      bar.update(len(block))
  if h.hexdigest() != ARCHIVE_SHA256:
    raise Cifar100Error(f"{path} has sha256 {h.hexdigest()}; the official archive has "
                        f"{ARCHIVE_SHA256} (damaged or a different file)")
  return path


def prepare_cifar100(data_dir: str | None = None, manual_dir: str | None = None):
  """Prepares CIFAR-100 as array_record in `data_dir` (no-op when already there).

  Args:
    data_dir: TFDS data directory (default: TFDS's default).
    manual_dir: folder with cifar-100-binary.tar.gz; when None the archive is
      downloaded.
  Returns:
    The TFDS builder of the prepared dataset.
  Raises:
    Cifar100Error: bad archive, TensorFlow missing, or the dataset exists in a
      format without random access.
  """
  b = builder(data_dir)
  if b.is_prepared():
    if _has_random_access(b):
      return b
    raise Cifar100Error(
        f"CIFAR-100 in {b.data_dir} was prepared as {b.info.file_format.value}, which has no "
        "random access; prepare it again into another folder with --data-dir DIR (array_record)")
  if manual_dir is not None:
    check_archive(manual_dir)
  if importlib.util.find_spec("tensorflow") is None:
    raise Cifar100Error(
        "preparing CIFAR-100 needs TensorFlow (the TFDS builder encodes its images with "
        "tf.image.encode_png); install the optional extra with  pip install '.[prepare]'  "
        "(or pip install tensorflow). Reading the prepared data does not need it.")
  b = builder(data_dir, file_format="array_record")
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return b


def data_source(split: str = SPLIT, data_dir: str | None = None, decoders=None):
  """Random-access view (`len`, `[i]`, `__getitems__`) of prepared CIFAR-100.

  Raises:
    NotPreparedError: with the command that prepares it.
  """
  b = builder(data_dir)
  if not b.is_prepared():
    raise NotPreparedError(not_prepared_message(data_dir))
  if not _has_random_access(b):
    raise NotPreparedError(
        f"CIFAR-100 in {b.data_dir} was prepared as {b.info.file_format.value}, without random "
        "access; " + not_prepared_message("ANOTHER_DIR"))
  return tfds.data_source(NAME, split=split, data_dir=data_dir, download=False, decoders=decoders)


def load_cifar100(data_dir: str | None = None, split: str = SPLIT):
  """All images of a prepared split, grouped by class (about 180 MB for 60,000).

  Returns:
    images: uint8 [N, 32, 32, 3], class after class (record order within a class).
    class_start, class_count: int32 [100].
    names: list of the 100 fine label names (e.g. 'apple').
  """
  ds = data_source(split, data_dir)
  n = len(ds)
  images = np.empty((n, 32, 32, 3), np.uint8)
  labels = np.empty((n,), np.int64)
  # Plain indexing, the Sequence protocol of every TFDS data source (mock_data's included).
  for i in progress(range(n), unit="img", desc=f"reading CIFAR-100 {split}", mininterval=0.5):
    ex = ds[i]
    images[i] = ex["image"]
    labels[i] = ex["label"]
  names = list(builder(data_dir).info.features["label"].names)
  order = np.argsort(labels, kind="stable")
  count = np.bincount(labels, minlength=len(names)).astype(np.int32)
  start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int32)
  return images[order], start, count, names

