"""The meta-dataset: classes of several image datasets as one class-indexed source.

Any subset of

    cifar100       CIFAR-100, 100 classes x 600 (TFDS `cifar100`, train+test)
    tinyimagenet   Tiny ImageNet-200, 200 classes x 550 (data/tinyimagenet.py, train+validation)
    omniglot       Omniglot, 1623 characters x 20 (data/omniglot.py)
    folder         an image folder root/<class>/<images> (data/image_folder.py)

is split by *class* into meta-train / meta-validation / meta-test (disjoint).
Each dataset's classes are split on their own, in the configured proportions,
by a permutation seeded with (split_seed, dataset name): adding a dataset
leaves the others' splits unchanged.  The split is written once to
`<workdir>/splits.json` and reused by every later command on that workdir; a
request that contradicts it (other datasets, seed or proportions, or a source
whose classes changed) raises MetaDatasetError.

Images are brought to one size and channel mode by `image_folder.fit_image`
(ITU-R 601-2 luma for RGB -> gray, replication for gray -> RGB, Pillow bilinear
resize) and cached once as uint8:

    <cache_dir>/metadataset_<datasets>_<S>x<S>x<C>/
      train.npy  val.npy  test.npy     uint8 [N, S, S, C], class after class
      train.json val.json test.json    class_start, class_count, class_names and
                                       the key: source fingerprints, size, classes

`load_meta_dataset` memory-maps the .npy files, so drawing an episode decodes
nothing.  A cache whose key no longer matches its sources (TFDS version, split
sizes and file sizes/mtimes; image files' sizes/mtimes) is rebuilt.
"""
from __future__ import annotations

import importlib
import json
import os
import zlib
from typing import Iterator, Sequence

import numpy as np
from . import image_folder as folder_lib
from .class_images import ClassImages
from .errors import DataError
from .files import atomic_path, write_json
from .progress import progress

DATASETS = ("cifar100", "tinyimagenet", "omniglot", "folder")
SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"
FORMAT = 1
_CHUNK = 512


class MetaDatasetError(DataError):
  """The meta-dataset request is invalid or contradicts the workdir's split."""


def _stats(paths: Sequence[str], root: str) -> dict:
  out = {}
  for p in sorted(paths):
    st = os.stat(p)
    out[os.path.relpath(p, root)] = [st.st_size, st.st_mtime_ns]
  return out


def tfds_fingerprint(b) -> dict:
  """A prepared TFDS dataset's identity: name/version, split sizes, file stats."""
  d = os.fspath(b.data_dir)
  return {"tfds": b.info.full_name,
          "splits": {k: v.num_examples for k, v in b.info.splits.items()},
          "files": _stats([os.path.join(d, f) for f in os.listdir(d)], d)}


def _fit_blocks(images: Iterator, size: int, channels: int) -> Iterator[np.ndarray]:
  block = []
  for im in images:
    block.append(folder_lib.fit_image(im, size, channels))
    if len(block) == _CHUNK:
      yield np.stack(block)
      block = []
  if block:
    yield np.stack(block)


# ---------------------------------------------------------------------------
# Sources: a cheap identity (fingerprint, class names) first, images only when
# a cache is built.

class _Cifar100:
  name = "cifar100"

  def __init__(self, data_dir, manual_dir):
    from . import cifar100
    self._lib, self._dd = cifar100, data_dir
    b = cifar100.builder(data_dir)
    if not b.is_prepared() and manual_dir is not None:
      cifar100.prepare_cifar100(data_dir, manual_dir)
      b = cifar100.builder(data_dir)
    if not b.is_prepared():
      raise cifar100.NotPreparedError(cifar100.not_prepared_message(data_dir))
    self._builder = b
    self._data = None

  def fingerprint(self):
    return tfds_fingerprint(self._builder)

  def class_names(self):
    return list(self._builder.info.features["label"].names)

  def _load(self):
    if self._data is None:
      self._data = self._lib.load_cifar100(self._dd)
    return self._data

  def class_count(self, c):
    return int(self._load()[2][c])

  def class_images(self, c, size, channels):
    images, start, count, _ = self._load()
    return _fit_blocks(iter(images[start[c]:start[c] + count[c]]), size, channels)


class _TinyImagenet:
  name = "tinyimagenet"

  def __init__(self, data_dir, manual_dir):
    from . import tinyimagenet
    self._lib, self._dd = tinyimagenet, data_dir
    b = tinyimagenet.builder(data_dir)
    if not b.is_prepared() and manual_dir is not None:
      b = tinyimagenet.prepare_tinyimagenet(data_dir, manual_dir)
    if not b.is_prepared():
      raise tinyimagenet.NotPreparedError(tinyimagenet.not_prepared_message(data_dir))
    self._builder = b
    self._rows = None
    self._ds = None

  def fingerprint(self):
    return tfds_fingerprint(self._builder)

  def class_names(self):
    return list(self._builder.info.features["label"].names)

  def _index(self):
    """Rows of each class; reads the labels without decoding a single JPEG."""
    if self._rows is None:
      import tensorflow_datasets as tfds
      split = "train+validation"
      raw = self._lib.data_source(split, self._dd, decoders={"image": tfds.decode.SkipDecoding()})
      labels = np.empty((len(raw),), np.int64)
      with progress(total=len(raw), unit="img", desc="indexing Tiny ImageNet labels") as bar:
        for lo in range(0, len(raw), 2048):
          batch = raw.__getitems__(list(range(lo, min(len(raw), lo + 2048))))
          labels[lo:lo + len(batch)] = [int(ex["label"]) for ex in batch]
          bar.update(len(batch))
      order = np.argsort(labels, kind="stable")
      bounds = np.searchsorted(labels[order], np.arange(len(self.class_names()) + 1))
      self._rows = [order[bounds[c]:bounds[c + 1]] for c in range(len(bounds) - 1)]
      self._ds = self._lib.data_source(split, self._dd)
    return self._rows

  def class_count(self, c):
    return len(self._index()[c])

  def class_images(self, c, size, channels):
    rows = self._index()[c]
    def images():
      for lo in range(0, len(rows), _CHUNK):
        for ex in self._ds.__getitems__([int(r) for r in rows[lo:lo + _CHUNK]]):
          yield ex["image"]
    return _fit_blocks(images(), size, channels)


class _Omniglot:
  name = "omniglot"

  def __init__(self, root, image_size):
    mod = importlib.import_module(".omniglot", __package__)
    self._load_fn = getattr(mod, "load_omniglot", None)
    if self._load_fn is None:
      raise MetaDatasetError("the omniglot reader (data/omniglot.py, load_omniglot) is not available")
    self._root_arg = root
    self._root = root or getattr(mod, "DEFAULT_ROOT", None) or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "omniglot")
    self._size = image_size
    self._data = None

  def fingerprint(self):
    root = os.fspath(self._root)
    if os.path.isfile(root):
      return {"files": _stats([root], os.path.dirname(root))}
    paths = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    return {"files": _stats(paths, root)}

  def _load(self):
    if self._data is None:
      # Omniglot's own reader resizes from the 105x105 originals to the target size.
      self._data = self._load_fn(self._root_arg, size=self._size)
    return self._data

  def class_names(self):
    return list(self._load().class_names)

  def class_count(self, c):
    return int(self._load().class_count[c])

  def class_images(self, c, size, channels):
    d = self._load()
    s, n = int(d.class_start[c]), int(d.class_count[c])
    return _fit_blocks(iter(np.asarray(d.images[s:s + n])), size, channels)


class _Folder:
  name = "folder"

  def __init__(self, root):
    if not root:
      raise MetaDatasetError("the 'folder' dataset needs image_folder=<root>/<class>/<images>")
    self._root = os.path.abspath(root)
    self._classes = folder_lib.scan_image_folder(self._root)

  def fingerprint(self):
    return folder_lib.folder_fingerprint(self._classes, self._root)

  def class_names(self):
    return [c for c, _ in self._classes]

  def class_count(self, c):
    return len(self._classes[c][1])

  def class_images(self, c, size, channels):
    files = self._classes[c][1]
    for lo in range(0, len(files), _CHUNK):
      yield np.stack([folder_lib.read_image(f, size, channels) for f in files[lo:lo + _CHUNK]])


# ---------------------------------------------------------------------------
# The class split.

def check_request(datasets: Sequence[str], proportions: Sequence[float]) -> tuple[str, ...]:
  """Validated dataset names in canonical order."""
  if isinstance(datasets, str):
    datasets = [datasets]
  unknown = [d for d in datasets if d not in DATASETS]
  if unknown:
    raise MetaDatasetError(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
  if not datasets:
    raise MetaDatasetError(f"no datasets given; choose from {list(DATASETS)}")
  p = np.asarray(proportions, np.float64)
  if p.shape != (3,) or np.any(p < 0) or abs(p.sum() - 1) > 1e-6:
    raise MetaDatasetError(f"proportions must be 3 non-negative numbers (train, val, test) "
                           f"summing to 1, got {list(proportions)}")
  return tuple(d for d in DATASETS if d in set(datasets))


def split_classes(names_by_dataset: dict[str, Sequence[str]], seed: int,
                  proportions: Sequence[float]) -> dict[str, list[str]]:
  """Splits each dataset's classes by a permutation seeded with (seed, dataset).

  Returns:
    {'train'|'val'|'test': sorted full class names '<dataset>/<class>'}.
  """
  out = {s: [] for s in SPLITS}
  for name, classes in names_by_dataset.items():
    classes = sorted(classes)
    n = len(classes)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    perm = [classes[i] for i in rng.permutation(n)]
    n_val, n_test = int(round(proportions[1] * n)), int(round(proportions[2] * n))
    n_train = n - n_val - n_test
    cuts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    for s in SPLITS:
      out[s] += [f"{name}/{c}" for c in cuts[s]]
  return {s: sorted(v) for s, v in out.items()}


def _workdir_split(workdir, sources, fps, seed, proportions) -> dict[str, list[str]]:
  path = os.path.join(workdir, SPLITS_FILE)
  names = list(sources)
  if not os.path.exists(path):
    split = split_classes({n: s.class_names() for n, s in sources.items()}, seed, proportions)
    os.makedirs(workdir, exist_ok=True)
    write_json(path, {"format": FORMAT, "datasets": names, "seed": seed,
                      "proportions": [float(p) for p in proportions],
                      "sources": {n: fps[n] for n in names}, **split})
    return split
  try:
    with open(path) as f:
      saved = json.load(f)
    saved_sets = {s: list(saved[s]) for s in SPLITS}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise MetaDatasetError(f"{path} is not a readable class split ({e}); delete it to split anew") from e
  fix = f"use another workdir, or delete {path} to split the classes anew"
  if list(saved.get("datasets", [])) != names:
    raise MetaDatasetError(f"{path} splits the classes of {saved.get('datasets')}, but this run asks "
                           f"for {names}; {fix}")
  saved_p = saved.get("proportions")
  if (saved.get("seed") != seed or not isinstance(saved_p, list) or len(saved_p) != 3
      or not np.allclose(saved_p, proportions)):
    raise MetaDatasetError(f"{path} was made with split_seed={saved.get('seed')} and proportions="
                           f"{saved.get('proportions')}, but this run asks for split_seed={seed} and "
                           f"proportions={list(proportions)}; {fix}")
  changed = False
  for n in names:
    if saved.get("sources", {}).get(n) == fps[n]:
      continue
    # The source's files changed: the split stays valid while its classes are the same.
    now = {f"{n}/{c}" for c in sources[n].class_names()}
    before = {c for s in SPLITS for c in saved_sets[s] if c.startswith(n + "/")}
    if now != before:
      new, gone = sorted(now - before), sorted(before - now)
      raise MetaDatasetError(f"the classes of {n} changed since {path} was written ({len(new)} new"
                             f"{', e.g. ' + new[0] if new else ''}; {len(gone)} gone"
                             f"{', e.g. ' + gone[0] if gone else ''}); {fix}")
    saved.setdefault("sources", {})[n] = fps[n]
    changed = True
  if changed:
    write_json(path, saved)
  return saved_sets


# ---------------------------------------------------------------------------
# The uint8 cache.

def _cached_split(directory, split, classes, sources, fps, size, channels):
  npy, meta = os.path.join(directory, f"{split}.npy"), os.path.join(directory, f"{split}.json")
  key = {"format": FORMAT, "split": split, "image_size": size, "channels": channels,
         "sources": fps, "classes": list(classes)}
  side = _read_sidecar(meta)
  if side is not None and side.get("key") == key and os.path.exists(npy):
    images = np.load(npy, mmap_mode="r")
    if images.shape == (sum(side["class_count"]), size, size, channels) and images.dtype == np.uint8:
      return ClassImages(images, np.asarray(side["class_start"], np.int32),
                         np.asarray(side["class_count"], np.int32), tuple(classes))

  local = {n: {c: i for i, c in enumerate(s.class_names())} for n, s in sources.items()}
  where = []
  for full in classes:
    n, _, c = full.partition("/")
    if c not in local[n]:
      raise MetaDatasetError(f"class {full} of the split is not in the {n} source")
    where.append((sources[n], local[n][c]))
  counts = np.array([src.class_count(c) for src, c in where], np.int32)
  starts = (np.cumsum(counts) - counts).astype(np.int32)
  total = int(counts.sum())
  os.makedirs(directory, exist_ok=True)
  with atomic_path(npy) as tmp:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total, size, size, channels))
    desc = f"caching meta-{split}: {len(classes)} classes at {size}x{size}x{channels}"
    with progress(total=total, unit="img", desc=desc) as bar:
      for (src, c), full, s, n in zip(where, classes, starts, counts):
        row = s
        for block in src.class_images(c, size, channels):
          out[row:row + len(block)] = block
          row += len(block)
          bar.update(len(block))
        if row != s + n:
          raise MetaDatasetError(f"{full}: expected {n} images, read {row - s}")
    out.flush()
    del out
  write_json(meta, {"key": key, "class_start": starts.tolist(), "class_count": counts.tolist(),
                    "class_names": list(classes)})
  return ClassImages(np.load(npy, mmap_mode="r"), starts, counts, tuple(classes))


def _read_sidecar(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def cache_path(datasets: Sequence[str], image_size: int, channels: int, workdir: str,
               cache_dir: str | None = None) -> str:
  """The folder holding the cached splits of this dataset combination."""
  names = check_request(datasets, (1, 0, 0))
  base = cache_dir or os.path.join(workdir, "cache")
  return os.path.join(base, f"metadataset_{'+'.join(names)}_{image_size}x{image_size}x{channels}")


def load_meta_dataset(datasets: Sequence[str], *, image_size: int, channels: int, workdir: str,
                      cache_dir: str | None = None, split_seed: int = 0,
                      proportions: Sequence[float] = (0.64, 0.16, 0.20), tfds_data_dir=None,
                      manual_dir=None, image_folder=None, omniglot_root=None):
  """The meta-dataset's class splits as memory-mapped ClassImages.

  Args:
    datasets: any of 'cifar100', 'tinyimagenet', 'omniglot', 'folder'.
    image_size, channels: every image becomes uint8 [image_size, image_size,
      channels] (channels 1 or 3).
    workdir: holds splits.json (and the cache unless cache_dir is given).
    cache_dir: where the uint8 cache lives (default <workdir>/cache).
    split_seed, proportions: the class split (train, val, test fractions).
    tfds_data_dir: TFDS data directory of CIFAR-100 / Tiny ImageNet.
    manual_dir: when a TFDS dataset is not prepared yet, prepare it from the
      archive in this folder (CIFAR-100 then needs TensorFlow).
    image_folder: root/<class>/<images> for the 'folder' dataset.
    omniglot_root: passed to data.omniglot.load_omniglot (default: its own).
  Returns:
    {'train'|'val'|'test': ClassImages}, images uint8 [N, S, S, C] np.memmap,
    class names '<dataset>/<class>'.
  Raises:
    MetaDatasetError, cifar100.NotPreparedError, tinyimagenet.NotPreparedError,
    image_folder.ImageFolderError: with what is wrong and how to fix it.
  """
  names = check_request(datasets, proportions)
  if not workdir:
    raise MetaDatasetError("the meta-dataset needs a workdir (it keeps the class split in <workdir>/splits.json)")
  if not isinstance(image_size, int) or image_size < 1:
    raise MetaDatasetError(f"image_size must be a positive integer, got {image_size!r}")
  if channels not in (1, 3):
    raise MetaDatasetError(f"channels must be 1 or 3, got {channels!r}")
  make = {"cifar100": lambda: _Cifar100(tfds_data_dir, manual_dir),
          "tinyimagenet": lambda: _TinyImagenet(tfds_data_dir, manual_dir),
          "omniglot": lambda: _Omniglot(omniglot_root, image_size),
          "folder": lambda: _Folder(image_folder)}
  sources = {n: make[n]() for n in names}
  fps = {n: s.fingerprint() for n, s in sources.items()}
  split = _workdir_split(workdir, sources, fps, split_seed, tuple(proportions))
  directory = cache_path(names, image_size, channels, workdir, cache_dir)
  return {s: _cached_split(directory, s, split[s], sources, fps, image_size, channels) for s in SPLITS}
