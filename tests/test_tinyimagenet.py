"""Tiny ImageNet builder: built from a SYNTHETIC archive in the release layout
(made here with PIL) and from the real-format subset in ../shared (skipped when
absent); read back with tfds.data_source; damaged archives fail clearly."""
import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from maml_jax.data import tinyimagenet as ti

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(ROOT, "..", "shared", "data", "tinyimagenet", "tiny-imagenet-200-mini.zip")
WNIDS = ["n00000001", "n00000002", "n00000003"]


def _jpeg(arr, quality=95):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def synthetic_release(train=4, val=2, gray=("n00000002_1.JPEG", "val_3.JPEG"), seed=0):
  """SYNTHETIC files in the tiny-imagenet-200 layout: {relative path: bytes}, and
  {file name: (wnid, uint8 [64, 64, 3] decoded pixels of that file)}.  Images
  are blocky random colours; the names in `gray` are grayscale JPEGs."""
  rng = np.random.default_rng(seed)
  files, truth = {}, {}

  def image(name, wnid):
    arr = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    data = _jpeg(arr[..., 0] if name in gray else arr)
    with Image.open(io.BytesIO(data)) as im:  # the pixels the archive holds
      truth[name] = (wnid, np.asarray(im.convert("RGB")))
    return data

  files["wnids.txt"] = ("\n".join(WNIDS) + "\n").encode()
  # Like the release, words.txt also lists ids that are not among the classes.
  files["words.txt"] = "".join(f"{w}\tsynthetic class {i}\n"
                               for i, w in enumerate(WNIDS + ["n09999999"])).encode()
  for w in WNIDS:
    files[f"train/{w}/{w}_boxes.txt"] = b""
    for k in range(train):
      files[f"train/{w}/images/{w}_{k}.JPEG"] = image(f"{w}_{k}.JPEG", w)
  ann = []
  for k in range(val * len(WNIDS)):
    w = WNIDS[k % len(WNIDS)]
    files[f"val/images/val_{k}.JPEG"] = image(f"val_{k}.JPEG", w)
    ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63\n")
  files["val/val_annotations.txt"] = "".join(ann).encode()
  files["test/images/test_0.JPEG"] = _jpeg(np.zeros((64, 64, 3), np.uint8))
  return files, truth


def write_zip(manual_dir, files):
  os.makedirs(manual_dir, exist_ok=True)
  path = os.path.join(manual_dir, ti.ARCHIVE)
  with zipfile.ZipFile(path, "w") as z:
    for rel, data in files.items():
      z.writestr(f"{ti.FOLDER}/{rel}", data)
  return path


def write_folder(manual_dir, files):
  for rel, data in files.items():
    p = os.path.join(manual_dir, ti.FOLDER, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
      f.write(data)


def _read_all(data_dir, split):
  ds = ti.data_source(split, data_dir)
  return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("form", ["zip", "folder", "manual-dir-is-the-folder"])
def test_builds_synthetic_release_and_reads_back(tmp_path, form):
  files, truth = synthetic_release()
  manual = str(tmp_path / "manual")
  (write_zip if form == "zip" else write_folder)(manual, files)
  if form == "manual-dir-is-the-folder":
    manual = os.path.join(manual, ti.FOLDER)
  data_dir = str(tmp_path / "tfds")
  b = ti.prepare_tinyimagenet(data_dir, manual_dir=manual)
  assert b.info.features["label"].names == WNIDS
  assert b.info.metadata["words"] == {w: f"synthetic class {i}" for i, w in enumerate(WNIDS)}
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 12, "validation": 6}

  seen = set()
  for split in ("train", "validation"):
    for ex in _read_all(data_dir, split):
      name = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
      wnid, arr = truth[name]
      assert WNIDS[int(ex["label"])] == wnid, name
      assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
      if name in ("n00000002_1.JPEG", "val_3.JPEG"):  # grayscale in the archive
        assert np.abs(ex["image"].astype(int) - arr).max() <= 1, name  # re-encoded as RGB
        assert np.array_equal(ex["image"][..., 0], ex["image"][..., 1])
        assert np.array_equal(ex["image"][..., 0], ex["image"][..., 2])
      else:
        assert np.array_equal(ex["image"], arr), name  # RGB JPEGs are stored byte for byte
      seen.add(name)
  assert seen == set(truth)
  assert "tensorflow" not in __import__("sys").modules


def test_prepare_data_command_builds(tmp_path, capsys):
  from maml_jax.cli import main   # through the command line, as a user runs it
  write_zip(str(tmp_path / "m"), synthetic_release(train=2, val=1)[0])
  assert main(["prepare-data", "--dataset", "tinyimagenet",
               "--manual-dir", str(tmp_path / "m"), "--data-dir", str(tmp_path / "d")]) == 0
  assert "tinyimagenet: train 6, validation 3 examples, 3 classes" in capsys.readouterr().out
  assert len(ti.data_source("train+validation", str(tmp_path / "d"))) == 9


def _truncate_zip(files, manual):
  path = write_zip(manual, files)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) * 2 // 3])


def _corrupt_jpeg(files, manual):
  rel = "train/n00000003/images/n00000003_2.JPEG"
  files[rel] = files[rel][:len(files[rel]) // 2]
  write_zip(manual, files)


@pytest.mark.parametrize("damage, expected", [
    (lambda f, m: os.makedirs(m), "found neither tiny-imagenet-200.zip nor tiny-imagenet-200/"),
    (_truncate_zip, "not a readable zip archive"),
    (lambda f, m: write_zip(m, {k: v for k, v in f.items() if k != "wnids.txt"}),
     "tiny-imagenet-200/wnids.txt is missing"),
    (lambda f, m: write_zip(m, {k: v for k, v in f.items() if k != "val/val_annotations.txt"}),
     "tiny-imagenet-200/val/val_annotations.txt is missing"),
    (lambda f, m: write_zip(m, {k: v for k, v in f.items() if k != "val/images/val_4.JPEG"}),
     "val/images/val_4.JPEG (val/val_annotations.txt line 5) is missing"),
    (lambda f, m: write_zip(m, {k: v for k, v in f.items() if "n00000002/images" not in k}),
     "no train/<wnid>/images/*.JPEG for 1 class(es), e.g. n00000002"),
    (_corrupt_jpeg, "corrupt JPEG"),
], ids=["no-archive", "truncated-zip", "no-wnids", "no-val-annotations", "missing-val-image",
        "empty-class", "corrupt-jpeg"])
def test_damaged_archive_fails_clearly(tmp_path, damage, expected):
  files, _ = synthetic_release(train=3, val=2)
  manual = str(tmp_path / "manual")
  damage(files, manual)
  with pytest.raises(ti.TinyImagenetError) as err:
    ti.prepare_tinyimagenet(str(tmp_path / "tfds"), manual_dir=manual)
  assert expected in str(err.value)
  if expected == "corrupt JPEG":
    assert "n00000003_2.JPEG" in str(err.value)
  assert not ti.builder(str(tmp_path / "tfds")).is_prepared()


def test_a_renamed_subset_is_accepted_when_it_is_the_only_one(tmp_path):
  manual = str(tmp_path / "m")
  files = synthetic_release(train=2, val=1)[0]
  os.rename(write_zip(manual, files), os.path.join(manual, "tiny-imagenet-200-mini.zip"))
  assert ti.open_release(manual).where.endswith("tiny-imagenet-200-mini.zip")
  os.rename(write_zip(manual, files), os.path.join(manual, "tiny-imagenet-200-other.zip"))
  with pytest.raises(ti.TinyImagenetError, match="several Tiny ImageNet archives.*keep one"):
    ti.open_release(manual)


def test_not_prepared_says_how(tmp_path):
  with pytest.raises(ti.NotPreparedError) as err:
    ti.data_source("train", str(tmp_path))
  assert "python run.py prepare-data --dataset tinyimagenet --manual-dir DIR" in str(err.value)
  assert str(tmp_path) in str(err.value)


def test_meta_dataset_cache_matches_the_tfds_records(tmp_path):
  """The Tiny ImageNet source of the meta-dataset: every class gets exactly its
  train + validation images, fitted to the configured size and channels."""
  from maml_jax.data import metadataset
  from maml_jax.data.image_folder import fit_image
  write_zip(str(tmp_path / "m"), synthetic_release(train=3, val=2)[0])
  data_dir = str(tmp_path / "d")
  # manual_dir: an unprepared Tiny ImageNet is built on first use (no TensorFlow needed).
  out = metadataset.load_meta_dataset(["tinyimagenet"], image_size=16, channels=1,
                                      workdir=str(tmp_path / "w"), tfds_data_dir=data_dir,
                                      manual_dir=str(tmp_path / "m"), proportions=(1 / 3, 1 / 3, 1 / 3))
  records = _read_all(data_dir, "train") + _read_all(data_dir, "validation")
  for split, ci in out.items():
    assert ci.num_classes == 1 and ci.images.shape == (5, 16, 16, 1)
    wnid = ci.class_names[0].split("/")[1]
    label = WNIDS.index(wnid)
    want = sorted(fit_image(r["image"], 16, 1).tobytes() for r in records if int(r["label"]) == label)
    assert sorted(x.tobytes() for x in np.asarray(ci.images)) == want


@pytest.fixture(scope="module")
def mini_dataset(tmp_path_factory):
  if not os.path.exists(MINI):
    pytest.skip("the real-format subset ../shared/data/tinyimagenet is not available")
  base = tmp_path_factory.mktemp("tinyimagenet_mini")
  manual = base / "manual"
  manual.mkdir()
  os.symlink(os.path.abspath(MINI), manual / os.path.basename(MINI))  # its own name; not copied
  data_dir = str(base / "tfds")
  ti.prepare_tinyimagenet(data_dir, manual_dir=str(manual))
  return data_dir


def test_real_format_subset(mini_dataset):
  import tensorflow_datasets as tfds
  b = ti.builder(mini_dataset)
  names = b.info.features["label"].names
  assert len(names) == 200 and len(set(names)) == 200
  assert b.info.splits["train"].num_examples == 8000
  assert b.info.splits["validation"].num_examples == 2000
  assert b.info.metadata["words"]["n01443537"] == "goldfish, Carassius auratus"

  z = zipfile.ZipFile(MINI)
  val_labels = dict(l.split("\t")[:2] for l in
                    z.read("tiny-imagenet-200/val/val_annotations.txt").decode().splitlines())
  raw = ti.data_source("train+validation", mini_dataset, decoders={"image": tfds.decode.SkipDecoding()})
  records = raw.__getitems__(list(range(len(raw))))
  ids = [r["id"].decode() for r in records]
  labels = np.array([int(r["label"]) for r in records])
  # Every record carries the label its file name / val_annotations.txt gives it.
  want = [n.split("_")[0] if not n.startswith("val_") else val_labels[n] for n in ids]
  assert [names[l] for l in labels] == want
  assert np.array_equal(np.bincount(labels, minlength=200), np.full(200, 50))

  def member(name, wnid):
    return (f"tiny-imagenet-200/val/images/{name}" if name.startswith("val_")
            else f"tiny-imagenet-200/train/{wnid}/images/{name}")

  modes = {i: Image.open(io.BytesIO(z.read(member(n, w)))).mode for i, (n, w) in enumerate(zip(ids, want))}
  gray = [i for i, m in modes.items() if m == "L"]
  assert len(gray) > 50  # about 2% of the release is grayscale
  ds = ti.data_source("train+validation", mini_dataset)
  for i in gray + list(range(0, len(ds), 97)):
    with Image.open(io.BytesIO(z.read(member(ids[i], want[i])))) as im:
      original = np.asarray(im.convert("RGB"), np.int16)
    image = ds[i]["image"]
    assert image.shape == (64, 64, 3)
    # RGB JPEGs are stored byte for byte; grayscale ones re-encoded (quality 100, 4:4:4) as RGB.
    assert np.abs(image.astype(np.int16) - original).max() <= (1 if i in gray else 0), ids[i]
