"""Omniglot (Lake et al. 2015) from the official release layout.

Reads `images_background.zip` and `images_evaluation.zip` (or the folders they
extract to) from `root`: `<zip stem>/<Alphabet>/characterNN/NNNN_DD.png`,
105x105 1-bit images with white background.  The default root is the copy
embedded in this repository (`data/omniglot`, MIT licence beside it); point
`--data-dir` at the official downloads to use those.

Images are resized to `size` x `size` (PIL Lanczos) and inverted so ink = 255.
The decoded array is cached next to the user's cache directory, keyed by the
source files' sizes and modification times, so later runs decode nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .class_images import ClassImages
from .errors import DataError
from .files import cache_root, write_npz
from .progress import progress as progress_bar

DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "omniglot")
PARTS = ("images_background", "images_evaluation")


class OmniglotError(DataError):
  """The Omniglot source files are missing or unreadable; the message names them."""


_PNG = re.compile(r"(?:^|/)(images_background|images_evaluation)/([^/]+)/([^/]+)/([^/]+\.png)$")


def _sources(root: str) -> list[str]:
  found = []
  for part in PARTS:
    z, d = os.path.join(root, part + ".zip"), os.path.join(root, part)
    if os.path.isfile(z):
      found.append(z)
    elif os.path.isdir(d):
      found.append(d)
    else:
      raise OmniglotError(f"Omniglot: neither {z} nor the folder {d} exists; "
                              f"point --data-dir at a folder holding {PARTS[0]}.zip and {PARTS[1]}.zip")
  return found


def _list(source: str) -> list[tuple[str, str]]:
  """(character key 'Alphabet/characterNN', member path) for every PNG."""
  if os.path.isdir(source):
    base = os.path.dirname(source)
    names = [os.path.relpath(os.path.join(dp, f), base).replace(os.sep, "/")
             for dp, _, fs in os.walk(source) for f in fs]
  else:
    try:
      with zipfile.ZipFile(source) as z:
        names = z.namelist()
    except zipfile.BadZipFile as e:
      raise OmniglotError(f"Omniglot: {source} is not a readable zip archive ({e})") from None
  out = []
  for n in sorted(names):
    m = _PNG.search(n)
    if m:
      out.append((f"{m.group(1)}/{m.group(2)}/{m.group(3)}", n))
  if not out:
    raise OmniglotError(f"Omniglot: no '<part>/<Alphabet>/<character>/<image>.png' entries in {source}")
  return out


def decode_drawing(raw: bytes, size: int) -> np.ndarray:
  """One drawing as the reader stores it: uint8 [size, size], ink = 255.

  `raw` is an image file's bytes in Omniglot's form (dark ink on a white
  background, any size; the release's are 105x105 1-bit PNGs): gray, resized
  by Lanczos, inverted.  The one home of Omniglot's pixel preprocessing (the
  reader and `run.py classify` both decode through it).  PIL's errors for a
  damaged file propagate; callers name the file.
  """
  from PIL import Image
  img = Image.open(io.BytesIO(raw)).convert("L").resize((size, size), Image.LANCZOS)
  return 255 - np.asarray(img, np.uint8)


def _decode(args) -> np.ndarray:
  source, members, size = args
  out = np.empty((len(members), size, size), np.uint8)
  z = zipfile.ZipFile(source) if os.path.isfile(source) else None
  try:
    for i, m in enumerate(members):
      try:
        raw = z.read(m) if z else open(os.path.join(os.path.dirname(source), m), "rb").read()
        out[i] = decode_drawing(raw, size)
      except Exception as e:  # PIL raises several types for damaged files
        raise OmniglotError(f"Omniglot: cannot decode {m} in {source}: {e}") from None
  finally:
    if z:
      z.close()
  return out


def _fingerprint(sources, size) -> str:
  h = hashlib.sha256(f"v1 size={size}".encode())
  for s in sources:
    st = os.stat(s)
    h.update(f"{os.path.abspath(s)} {st.st_size} {st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


def load_omniglot(root: str | None = None, size: int = 28, progress: bool = True) -> ClassImages:
  """All 1623 characters as a ClassImages of uint8 [32460, size, size, 1].

  Classes are ordered by 'Alphabet/characterNN' (sorted), named
  '<part>/<Alphabet>/<characterNN>'; each has its 20 drawings.
  """
  root = root or DEFAULT_ROOT
  sources = _sources(root)
  key = _fingerprint(sources, size)
  path = os.path.join(cache_root(), f"omniglot-{size}-{key}.npz")
  cached = _read_cache(path, size)
  if cached is not None:
    return cached
  entries = [(src, k, m) for src in sources for k, m in _list(src)]
  entries.sort(key=lambda e: (e[1].split("/", 1)[1], e[2]))
  names = sorted({k for _, k, _ in entries}, key=lambda k: k.split("/", 1)[1])
  jobs = [(src, [m for s, _, m in entries if s == src][i:i + 2000], size)
          for src in sources for i in range(0, sum(1 for e in entries if e[0] == src), 2000)]
  decoded = {}
  with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
    bar = progress_bar(total=len(entries), desc="decoding Omniglot", unit="img", disable=not progress)
    for job, arr in zip(jobs, pool.map(_decode, jobs)):
      for m, a in zip(job[1], arr):
        decoded[(job[0], m)] = a
      bar.update(len(arr))
    bar.close()
  by_class: dict[str, list[np.ndarray]] = {n: [] for n in names}
  for src, k, m in entries:
    by_class[k].append(decoded[(src, m)])
  counts = np.array([len(by_class[n]) for n in names], np.int32)
  images = np.stack([a for n in names for a in by_class[n]])[..., None]
  write_npz(path, images=images, counts=counts, names=np.array(names))
  return ClassImages.from_per_class(list(_split_rows(images, counts)), names)


def _read_cache(path: str, size: int) -> ClassImages | None:
  """The cached decoded set, or None when there is none or it fails its check
  (truncated, damaged, wrong shapes): then it is removed and decoded again."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      images, counts, names = z["images"], z["counts"], z["names"]
    if (images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 1)
        or counts.ndim != 1 or len(counts) != len(names) or (counts < 1).any()
        or int(counts.sum()) != len(images)):
      raise ValueError(f"images {images.dtype} {list(images.shape)}, {len(counts)} counts summing to "
                       f"{int(counts.sum())}, {len(names)} names")
  except Exception as e:   # numpy and zipfile raise many types for a damaged file
    print(f"warning: the Omniglot cache {path} is damaged ({type(e).__name__}: {e}); decoding again",
          file=sys.stderr)
    os.remove(path)
    return None
  return ClassImages.from_per_class(list(_split_rows(images, counts)), [str(n) for n in names])


def _split_rows(images, counts):
  start = 0
  for c in counts:
    yield images[start:start + c]
    start += c


def rotations(data: ClassImages) -> ClassImages:
  """Each class's 90, 180 and 270-degree rotations as three new classes."""
  per, names = [], []
  for k in range(4):
    for c in range(data.num_classes):
      s, n = data.class_start[c], data.class_count[c]
      per.append(np.rot90(data.images[s:s + n], k, axes=(1, 2)))
      names.append(f"{data.class_names[c]}@rot{90 * k}" if data.class_names else str(c))
  return ClassImages.from_per_class(per, names, data.synthetic)


def standard_split(data: ClassImages, seed: int = 1, train: int = 1200, val: int = 100):
  """The standard protocol (Vinyals et al., Finn et al.): `train` characters
  (a seeded permutation over both zips) for meta-training, the rest for
  meta-test; the last `val` of the training characters are held out for
  validation.  Meta-training characters get their rotations as extra classes.

  Returns: {"train", "val", "test"}: ClassImages.
  """
  perm = np.random.default_rng(seed).permutation(data.num_classes)
  return {"train": rotations(data.subset(perm[:train - val])),
          "val": data.subset(perm[train - val:train]),
          "test": data.subset(perm[train:])}


def alphabet(name: str) -> str:
  """The group of an Omniglot class name '<part>/<Alphabet>/<characterNN>[@rotN]':
  '<part>/<Alphabet>[@rotN]' (a rotated alphabet is a group of its own, so an
  episode's characters share one alphabet and one rotation)."""
  base, _, rot = name.partition("@")
  group = "/".join(base.split("/")[:2])
  return f"{group}@{rot}" if rot else group


def with_alphabets(data: ClassImages) -> ClassImages:
  """`data` with `class_groups` set to each class's alphabet (`alphabet`), so
  that episodes are drawn within one alphabet (`--within-alphabet`)."""
  if not data.class_names:
    raise OmniglotError("Omniglot: within-alphabet episodes need class names ('<part>/<Alphabet>/<char>')")
  keys = [alphabet(n) for n in data.class_names]
  ids = {k: i for i, k in enumerate(sorted(set(keys)))}
  return dataclasses.replace(data, class_groups=np.array([ids[k] for k in keys], np.int32))


def lake_split(data: ClassImages, seed: int = 1, val_alphabets: int = 5):
  """Lake et al.'s protocol: meta-train and validate on `images_background`
  only, meta-test on `images_evaluation`.  Validation holds out
  `val_alphabets` whole background alphabets (a seeded choice), so validation
  characters, like test ones, come from alphabets never trained on.
  Meta-training characters get their rotations as extra classes.

  Returns: {"train", "val", "test"}: ClassImages.
  """
  parts = np.array([n.split("/", 1)[0] for n in data.class_names])
  background = np.flatnonzero(parts == PARTS[0])
  evaluation = np.flatnonzero(parts == PARTS[1])
  if not len(background) or not len(evaluation):
    raise OmniglotError(f"Omniglot: the lake split needs classes from both {PARTS[0]} and {PARTS[1]}")
  names = sorted({alphabet(data.class_names[c]) for c in background})
  if len(names) <= val_alphabets:
    raise OmniglotError(f"Omniglot: the lake split holds out {val_alphabets} background alphabets for "
                        f"validation; only {len(names)} exist")
  held = {names[i] for i in np.random.default_rng(seed).permutation(len(names))[:val_alphabets]}
  val = [c for c in background if alphabet(data.class_names[c]) in held]
  train = [c for c in background if alphabet(data.class_names[c]) not in held]
  return {"train": rotations(data.subset(train)), "val": data.subset(val), "test": data.subset(evaluation)}
