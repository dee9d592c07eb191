"""SMI shard format: round trip, checksums, and every validation error."""
import json
import os

import numpy as np
import pytest

from maml_jax import io as files
from maml_jax.smi import shards
from maml_jax.smi.errors import SMIDataError


def small_data(n=11, r=6, synthetic=True, seed=0):
  rng = np.random.default_rng(seed)
  return shards.SMIData(
      rois=rng.integers(0, 256, (n, r, 64, 64), dtype=np.uint8), label=(np.arange(n) % 5).astype(np.int32),
      classes=("1", "2", "3", "4", "5"), roi_names=tuple(f"roi{i + 1}" for i in range(r)), synthetic=synthetic,
      age_months=rng.uniform(60, 200, n).astype(np.float32), sex=np.array(["F", "M"] * (n // 2) + ["F"] * (n % 2)),
      image_id=np.array([f"img{i}" for i in range(n)]), patient_id=np.array([f"p{i // 2}" for i in range(n)]),
      source="test", label_scheme={"name": "smi5"})


def test_round_trip_keeps_every_field(tmp_path):
  data = small_data()
  m = shards.write_shards(str(tmp_path), data, shard_size=4)
  assert [s["num_images"] for s in m["shards"]] == [4, 4, 3]
  assert m["synthetic"] is True and m["counts"] == [3, 2, 2, 2, 2]
  back = shards.load_shards(str(tmp_path))
  np.testing.assert_array_equal(back.rois, data.rois)
  np.testing.assert_array_equal(back.label, data.label)
  np.testing.assert_array_equal(back.age_months, data.age_months)
  for k in ("sex", "image_id", "patient_id"):
    assert getattr(back, k).tolist() == getattr(data, k).tolist()
  assert back.classes == data.classes and back.roi_names == data.roi_names and back.synthetic
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temporary files left


def test_optional_fields_may_be_absent(tmp_path):
  d = small_data(synthetic=False)
  d = shards.SMIData(d.rois, d.label, d.classes, d.roi_names, False)
  shards.write_shards(str(tmp_path), d)
  back = shards.load_shards(str(tmp_path))
  assert back.patient_id is None and back.sex is None and not back.synthetic


def test_flipped_byte_is_caught_and_the_shard_named(tmp_path):
  shards.write_shards(str(tmp_path), small_data(), shard_size=4)
  path = tmp_path / "shard-00001.npz"
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 0x01
  path.write_bytes(bytes(raw))
  with pytest.raises(SMIDataError, match=r"shard-00001\.npz: sha256"):
    shards.load_shards(str(tmp_path))


def _rewrite_shard(folder, name, manifest_update=True, **arrays):
  """Replaces a shard's arrays and (optionally) its checksum in the manifest."""
  path = os.path.join(folder, name)
  with np.load(path) as z:
    content = {k: z[k] for k in z.files}
  content.update(arrays)
  files.write_npz(path, **content)
  if manifest_update:
    mpath = os.path.join(folder, shards.MANIFEST)
    with open(mpath) as f:
      m = json.load(f)
    for s in m["shards"]:
      if s["file"] == name:
        s["sha256"] = files.sha256_file(path)
    with open(mpath, "w") as f:
      json.dump(m, f)


def test_wrong_dtype(tmp_path):
  shards.write_shards(str(tmp_path), small_data(), shard_size=4)
  with np.load(tmp_path / "shard-00000.npz") as z:
    rois = z["rois"].astype(np.float32)
  _rewrite_shard(str(tmp_path), "shard-00000.npz", rois=rois)
  with pytest.raises(SMIDataError, match=r"shard-00000\.npz: 'rois' must be uint8, got float32"):
    shards.load_shards(str(tmp_path))


def test_wrong_shape(tmp_path):
  shards.write_shards(str(tmp_path), small_data(), shard_size=4)
  with np.load(tmp_path / "shard-00000.npz") as z:
    rois = z["rois"][:, :, :32]
  _rewrite_shard(str(tmp_path), "shard-00000.npz", rois=rois)
  with pytest.raises(SMIDataError, match=r"shard-00000\.npz: 'rois' must have shape \[n, 6, 64, 64\], got \[4, 6, 32, 64\]"):
    shards.load_shards(str(tmp_path))


def test_label_outside_scheme(tmp_path):
  shards.write_shards(str(tmp_path), small_data(), shard_size=4)
  _rewrite_shard(str(tmp_path), "shard-00002.npz", label=np.array([0, 7, 1], np.int32))
  with pytest.raises(SMIDataError, match=r"shard-00002\.npz: label 7 .* outside the scheme's 5 classes"):
    shards.load_shards(str(tmp_path))


def test_writer_refuses_labels_outside_scheme(tmp_path):
  d = small_data()
  bad = shards.SMIData(d.rois, np.full(len(d.label), 5, np.int32), d.classes, d.roi_names, True)
  with pytest.raises(SMIDataError, match="outside the scheme"):
    shards.write_shards(str(tmp_path / "out"), bad)
  assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_manifest_counts_do_not_match_shards(tmp_path):
  shards.write_shards(str(tmp_path), small_data(), shard_size=4)
  # A consistent shard whose labels changed: per-shard counts then disagree.
  _rewrite_shard(str(tmp_path), "shard-00000.npz", label=np.array([0, 0, 0, 0], np.int32))
  with pytest.raises(SMIDataError, match=r"shard-00000\.npz: counts per class \[4, 0, 0, 0, 0\] do not match"):
    shards.load_shards(str(tmp_path))


def test_manifest_total_counts_checked(tmp_path):
  shards.write_shards(str(tmp_path), small_data(), shard_size=4)
  mpath = tmp_path / shards.MANIFEST
  m = json.loads(mpath.read_text())
  m["counts"] = [3, 2, 2, 2, 3]
  mpath.write_text(json.dumps(m))
  with pytest.raises(SMIDataError, match=r"manifest\.json: counts per class \[3, 2, 2, 2, 3\] do not match the shards' \[3, 2, 2, 2, 2\]"):
    shards.load_shards(str(tmp_path))


def test_image_count_mismatch_and_missing_shard(tmp_path):
  shards.write_shards(str(tmp_path), small_data(), shard_size=4)
  mpath = tmp_path / shards.MANIFEST
  m = json.loads(mpath.read_text())
  m["shards"][1]["num_images"] = 5
  mpath.write_text(json.dumps(m))
  with pytest.raises(SMIDataError, match=r"shard-00001\.npz: holds 4 images, the manifest says 5"):
    shards.load_shards(str(tmp_path))
  m["shards"][1]["num_images"] = 4
  mpath.write_text(json.dumps(m))
  os.remove(tmp_path / "shard-00002.npz")
  with pytest.raises(SMIDataError, match=r"shard-00002\.npz: shard listed in the manifest is missing"):
    shards.load_shards(str(tmp_path))


def test_not_a_shard_folder(tmp_path):
  with pytest.raises(SMIDataError, match="no manifest"):
    shards.load_shards(str(tmp_path))
  (tmp_path / shards.MANIFEST).write_text("{not json")
  with pytest.raises(SMIDataError, match="cannot read the manifest"):
    shards.load_shards(str(tmp_path))


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
  target = tmp_path / "out"
  with pytest.raises(RuntimeError):
    with files.atomic_dir(str(target)) as tmp:
      with open(os.path.join(tmp, "partial"), "w") as f:
        f.write("x")
      raise RuntimeError("boom")
  assert os.listdir(tmp_path) == []
