"""Tiny ImageNet-200 as a TFDS dataset, built from the user's own archive.

Tiny ImageNet cannot be downloaded automatically (ImageNet terms), so the
builder reads `tiny-imagenet-200.zip`, or its extracted folder
`tiny-imagenet-200/`, from the TFDS manual directory:

    <manual_dir>/tiny-imagenet-200.zip     (or <manual_dir>/tiny-imagenet-200/)
      tiny-imagenet-200/wnids.txt          one WordNet id per class (200)
      tiny-imagenet-200/words.txt          "<wnid>\\t<words>" (may list more ids)
      tiny-imagenet-200/train/<wnid>/images/<wnid>_<k>.JPEG      (500 per class)
      tiny-imagenet-200/val/images/val_<k>.JPEG                  (50 per class)
      tiny-imagenet-200/val/val_annotations.txt  "<file>\\t<wnid>\\t<box>"

Splits: `train` and `validation` (labelled through val_annotations.txt).  The
`test` images carry no labels and are not built.  Examples are
`{'image': uint8 [64, 64, 3], 'label': int (index into wnids), 'id': file name}`;
label names are the wnids, and `info.metadata['words']` maps each wnid to its
words.txt description.

Building needs no TensorFlow: the builder yields the JPEG bytes of the release
(TFDS stores encoded bytes as they are).  Every image is decoded once while
building, so a damaged JPEG fails the build with its name.  Grayscale (about 2%)
and other non-RGB JPEGs are converted to RGB and re-encoded at quality 100 with
4:4:4 chroma (at most one grey level off), so every stored image has the three
channels the feature declares.  Records are written as array_record and read
back with `tfds.data_source` (random access, no TensorFlow).
"""
from __future__ import annotations

import glob
import io
import os
import zipfile
from typing import Iterator

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from .errors import DataError

NAME = "tiny_imagenet200"
ARCHIVE = "tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
IMAGE_SIZE = 64
SPLITS = ("train", "validation")


class TinyImagenetError(DataError):
  """The Tiny ImageNet archive is missing, damaged or incomplete."""


class NotPreparedError(DataError):
  """Tiny ImageNet has not been built into the TFDS data directory."""


def not_prepared_message(data_dir) -> str:
  where = data_dir or "the default TFDS data directory (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  return (f"Tiny ImageNet is not prepared in {where}. Download tiny-imagenet-200.zip "
          "(http://cs231n.stanford.edu/tiny-imagenet-200.zip, about 250 MB; ImageNet terms), put it "
          "in a folder DIR and run once:  python run.py prepare-data --dataset tinyimagenet "
          "--manual-dir DIR" + (f" --data-dir {data_dir}" if data_dir else ""))


# ---------------------------------------------------------------------------
# Reading the release layout from a zip or a folder.

class _Archive:
  """Files of the release, addressed relative to the `tiny-imagenet-200/` root."""

  where: str

  def files(self) -> list[str]:
    raise NotImplementedError

  def read(self, rel: str) -> bytes:
    raise NotImplementedError


class _ZipArchive(_Archive):

  def __init__(self, path: str):
    self.where = path
    try:
      self._zip = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
      raise TinyImagenetError(f"{path} is not a readable zip archive (truncated or damaged?): {e}") from e
    names = [n for n in self._zip.namelist() if not n.endswith("/")]
    roots = sorted((n[:-len("wnids.txt")] for n in names if n.rsplit("/", 1)[-1] == "wnids.txt"),
                   key=len)
    # The release nests everything under tiny-imagenet-200/; accept any single root folder.
    self._root = roots[0] if roots else f"{FOLDER}/"
    self._files = [n[len(self._root):] for n in names if n.startswith(self._root)]

  def files(self):
    return self._files

  def read(self, rel):
    try:
      return self._zip.read(self._root + rel)
    except KeyError as e:
      raise TinyImagenetError(f"{self.where} has no {self._root + rel}") from e
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
      raise TinyImagenetError(f"{self.where}: member {self._root + rel} is damaged: {e}") from e


class _FolderArchive(_Archive):

  def __init__(self, path: str):
    self.where = path
    self._root = path

  def files(self):
    out = []
    for d, _, names in os.walk(self._root):
      rel = os.path.relpath(d, self._root)
      out += [n if rel == "." else f"{rel}/{n}".replace(os.sep, "/") for n in names]
    return out

  def read(self, rel):
    try:
      with open(os.path.join(self._root, rel), "rb") as f:
        return f.read()
    except FileNotFoundError as e:
      raise TinyImagenetError(f"{self.where} has no {rel}") from e


def open_release(manual_dir: str) -> _Archive:
  """Finds `tiny-imagenet-200.zip` (or a single `tiny-imagenet-200*.zip`, such
  as a `-mini` subset) or `tiny-imagenet-200/` in `manual_dir` (or accepts
  `manual_dir` itself when it is the extracted release)."""
  zip_path = os.path.join(manual_dir, ARCHIVE)
  folder = os.path.join(manual_dir, FOLDER)
  if os.path.isfile(zip_path):
    return _ZipArchive(zip_path)
  # A renamed subset of the release (e.g. tiny-imagenet-200-mini.zip), when it is the only one.
  variants = sorted(glob.glob(os.path.join(glob.escape(manual_dir), "tiny-imagenet-200*.zip")))
  if len(variants) > 1:
    raise TinyImagenetError(f"{manual_dir} holds several Tiny ImageNet archives and no {ARCHIVE}: "
                            f"{', '.join(os.path.basename(v) for v in variants)}; keep one")
  if variants:
    return _ZipArchive(variants[0])
  if os.path.isdir(folder):
    return _FolderArchive(folder)
  if os.path.isfile(os.path.join(manual_dir, "wnids.txt")):  # pointed at the extracted folder itself
    return _FolderArchive(manual_dir)
  raise TinyImagenetError(f"found neither {ARCHIVE} nor {FOLDER}/ in {manual_dir}. "
                          + TinyImagenet.MANUAL_DOWNLOAD_INSTRUCTIONS.strip())


def _lines(archive: _Archive, rel: str, have: set[str]) -> list[str]:
  if rel not in have:
    raise TinyImagenetError(f"{archive.where} is incomplete: {FOLDER}/{rel} is missing")
  try:
    text = archive.read(rel).decode("utf-8")
  except UnicodeDecodeError as e:
    raise TinyImagenetError(f"{archive.where}: {rel} is not UTF-8 text: {e}") from e
  return [l.rstrip("\r") for l in text.split("\n") if l.strip()]


def read_layout(archive: _Archive):
  """Parses and checks the release's index files.

  Returns:
    wnids: list[str], the classes in wnids.txt order (= label order).
    words: dict wnid -> description.
    items: dict split -> list of (relative path, wnid), sorted.
  """
  files = archive.files()
  have = set(files)
  wnids = [l.strip() for l in _lines(archive, "wnids.txt", have)]
  if len(set(wnids)) != len(wnids):
    raise TinyImagenetError(f"{archive.where}: wnids.txt lists a class twice")
  known = set(wnids)
  words = {}
  for l in _lines(archive, "words.txt", have):
    wnid, _, text = l.partition("\t")
    if wnid in known:
      words[wnid] = text.strip()
  missing_words = [w for w in wnids if w not in words]
  if missing_words:
    raise TinyImagenetError(f"{archive.where}: words.txt has no line for {len(missing_words)} "
                            f"class(es), e.g. {missing_words[0]}")

  train = {w: [] for w in wnids}
  for f in files:
    parts = f.split("/")
    if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and parts[3].upper().endswith(".JPEG"):
      if parts[1] not in train:
        raise TinyImagenetError(f"{archive.where}: train/{parts[1]}/ is a class missing from wnids.txt")
      train[parts[1]].append(f)
  empty = [w for w in wnids if not train[w]]
  if empty:
    raise TinyImagenetError(f"{archive.where} is incomplete: no train/<wnid>/images/*.JPEG for "
                            f"{len(empty)} class(es), e.g. {empty[0]}")

  val = []
  for i, l in enumerate(_lines(archive, "val/val_annotations.txt", have), 1):
    cols = l.split("\t")
    if len(cols) < 2:
      raise TinyImagenetError(f"{archive.where}: val/val_annotations.txt line {i} is not "
                              f"'<file>\\t<wnid>...': {l!r}")
    rel = f"val/images/{cols[0]}"
    if cols[1] not in known:
      raise TinyImagenetError(f"{archive.where}: val/val_annotations.txt line {i} names class "
                              f"{cols[1]!r}, which is not in wnids.txt")
    if rel not in have:
      raise TinyImagenetError(f"{archive.where} is incomplete: {rel} (val/val_annotations.txt "
                              f"line {i}) is missing")
    val.append((rel, cols[1]))
  items = {"train": sorted((f, w) for w in wnids for f in train[w]), "validation": sorted(val)}
  return wnids, words, items


def rgb_jpeg(data: bytes, where: str) -> bytes:
  """Checks that `data` is a 64x64 JPEG and returns it as an RGB JPEG.

  RGB JPEGs pass through untouched; grayscale (and any other mode) are
  converted and re-encoded at quality 100, 4:4:4 chroma.
  """
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()  # a full decode: truncated or corrupt data fails here
      if im.format != "JPEG":
        raise TinyImagenetError(f"{where} is a {im.format} image, not a JPEG")
      if im.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise TinyImagenetError(f"{where} is {im.size[0]}x{im.size[1]}; Tiny ImageNet images are "
                                f"{IMAGE_SIZE}x{IMAGE_SIZE}")
      if im.mode == "RGB":
        return data
      out = io.BytesIO()
      im.convert("RGB").save(out, "JPEG", quality=100, subsampling=0)
      return out.getvalue()
  except TinyImagenetError:
    raise
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad data
    raise TinyImagenetError(f"corrupt JPEG {where}: {e}") from e


# ---------------------------------------------------------------------------
# The TFDS builder.

class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """Tiny ImageNet-200 (train and validation) from a manually supplied archive."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Train (500 per class) and validation (50 per class) splits of "
               "tiny-imagenet-200.zip; non-RGB JPEGs converted to RGB.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download {ARCHIVE} (http://cs231n.stanford.edu/tiny-imagenet-200.zip, about 250 MB,
  ImageNet terms: non-commercial research and education) and place the zip, or
  the {FOLDER}/ folder extracted from it, in the manual directory.
  """

  # TFDS looks for a builder's metadata files in the folder its module name
  # spells, which is wrong for a checkout's data/ folder imported as maml_jax.data.
  pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))

  def __init__(self, **kwargs):
    # Random access (tfds.data_source) needs array_record.
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="jpeg"),
            # Names (the wnids) come from wnids.txt when the dataset is built.
            "label": tfds.features.ClassLabel(),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="http://cs231n.stanford.edu/",
        metadata=tfds.core.MetadataDict(),
        citation="""@article{le2015tiny,
  title={Tiny ImageNet Visual Recognition Challenge},
  author={Le, Ya and Yang, Xuan},
  journal={CS 231N},
  year={2015}
}""",
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except (AssertionError, ValueError) as e:
      raise TinyImagenetError(str(e)) from e
    archive = open_release(manual_dir)
    wnids, words, items = read_layout(archive)
    self.info.features["label"].names = wnids
    self.info.metadata["words"] = words
    self.info.metadata["source"] = os.path.basename(archive.where)
    return {split: self._generate_examples(archive, items[split]) for split in SPLITS}

  def _generate_examples(self, archive: _Archive, items) -> Iterator:
    for rel, wnid in items:
      image = rgb_jpeg(archive.read(rel), f"{archive.where}: {rel}")
      name = rel.rsplit("/", 1)[-1]
      yield name, {"image": image, "label": wnid, "id": name}


# ---------------------------------------------------------------------------
# Public entry points.

def builder(data_dir: str | None = None) -> TinyImagenet:
  return TinyImagenet(data_dir=data_dir)


def prepare_tinyimagenet(data_dir: str | None = None, manual_dir: str | None = None) -> TinyImagenet:
  """Builds the dataset once from `manual_dir` into `data_dir` (no-op if built).

  Args:
    data_dir: TFDS data directory; defaults to TFDS's default.
    manual_dir: folder holding tiny-imagenet-200.zip or tiny-imagenet-200/;
      defaults to TFDS's `<data_dir>/downloads/manual`.
  Raises:
    TinyImagenetError: the archive is missing, damaged or incomplete.
  """
  b = builder(data_dir)
  if b.is_prepared():
    return b
  if manual_dir is not None:
    if not os.path.isdir(manual_dir):
      raise TinyImagenetError(f"manual directory {manual_dir} is not a folder")
    open_release(manual_dir)  # says plainly when the archive is not there
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return b


def data_source(split: str = "train+validation", data_dir: str | None = None, decoders=None):
  """Random-access view (`len`, `[i]`, `__getitems__`) of a prepared split.

  Raises:
    NotPreparedError: with the command that prepares it.
  """
  b = builder(data_dir)
  if not b.is_prepared():
    raise NotPreparedError(not_prepared_message(data_dir))
  return tfds.data_source(NAME, split=split, data_dir=data_dir, download=False, decoders=decoders)
