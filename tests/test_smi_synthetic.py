"""The SYNTHETIC demo data: shape, determinism, patients, learnable but not trivial."""
import os

import numpy as np
import pytest

from maml_jax.smi import demo_images, labels, prepare, shards, synthetic


@pytest.fixture(scope="module")
def demo():
  return synthetic.generate(0)


def test_shape_counts_and_synthetic_label(demo):
  assert demo.rois.shape == (865, 6, 64, 64) and demo.rois.dtype == np.uint8
  assert demo.counts().tolist() == list(labels.PAPER_COUNTS_5)
  assert demo.synthetic and "SYNTHETIC" in demo.source
  assert set(demo.sex.tolist()) == {"F", "M"}


def test_deterministic_in_seed(demo):
  small = synthetic.generate(0, counts=(4, 4, 4, 4, 4))
  again = synthetic.generate(0, counts=(4, 4, 4, 4, 4))
  other = synthetic.generate(1, counts=(4, 4, 4, 4, 4))
  np.testing.assert_array_equal(small.rois, again.rois)
  assert small.patient_id.tolist() == again.patient_id.tolist()
  assert not np.array_equal(small.rois, other.rois)


def test_patients_with_two_images_of_neighbouring_stages(demo):
  ids, inverse, counts = np.unique(demo.patient_id, return_inverse=True, return_counts=True)
  assert counts.max() == 2 and (counts == 2).sum() == synthetic.PAIRED_PATIENTS
  for p in np.flatnonzero(counts == 2):
    a, b = demo.label[inverse == p]
    assert abs(int(a) - int(b)) <= 1
    assert len(set(demo.sex[inverse == p])) == 1


def test_age_grows_with_stage(demo):
  means = [demo.age_months[demo.label == c].mean() for c in range(5)]
  assert np.all(np.diff(means) > 0)


def _ridge_accuracy(demo, roi, train, test):
  x = demo.rois[:, roi].astype(np.float32).reshape(-1, 16, 4, 16, 4).mean((2, 4)).reshape(len(demo.rois), -1)
  x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
  x = np.concatenate([x, np.ones((len(x), 1))], 1)
  w = np.linalg.solve(x[train].T @ x[train] + 10 * np.eye(x.shape[1]), x[train].T @ np.eye(5)[demo.label[train]])
  pred = (x[test] @ w).argmax(1)
  return (pred == demo.label[test]).mean(), np.abs(pred - demo.label[test])


def test_learnable_not_trivial_and_rois_differ(demo):
  rng = np.random.default_rng(0)
  perm = rng.permutation(865)
  train, test = perm[:600], perm[600:]
  acc4, err4 = _ridge_accuracy(demo, 3, train, test)    # roi4: the cleanest profile
  acc2, _ = _ridge_accuracy(demo, 1, train, test)       # roi2: the noisiest profile
  majority_class = np.bincount(demo.label[test]).max() / len(test)
  assert majority_class + 0.15 < acc4 < 0.95             # learnable, but not solved by a linear model
  assert acc2 < acc4 - 0.05                              # ROIs differ in how informative they are
  assert (err4 <= 1).mean() > 0.9                        # mistakes are mostly neighbouring stages


def test_demo_cache_written_once_and_rebuilt_if_damaged(tmp_path, monkeypatch):
  full = synthetic.generate
  monkeypatch.setattr(synthetic, "generate", lambda seed: full(seed, counts=(60, 60, 60, 60, 60)))
  data = synthetic.load_demo(0, str(tmp_path))
  folder = synthetic.demo_dir(0, str(tmp_path))
  manifest = shards.read_manifest(folder)
  assert manifest["synthetic"] is True and manifest["generator"]["seed"] == 0
  stamp = os.path.getmtime(os.path.join(folder, "shard-00000.npz"))
  assert synthetic.load_demo(0, str(tmp_path)).num_images == data.num_images
  assert os.path.getmtime(os.path.join(folder, "shard-00000.npz")) == stamp   # read, not regenerated
  with open(os.path.join(folder, "shard-00001.npz"), "r+b") as f:
    f.seek(100)
    f.write(b"\xff\xff")
  again = synthetic.load_demo(0, str(tmp_path))
  np.testing.assert_array_equal(again.rois, data.rois)


def test_demo_images_round_trip_through_prepare(tmp_path):
  data = synthetic.generate(0, counts=(2, 2, 2, 2, 2))
  demo_images.write_demo_images(str(tmp_path / "png"), data)
  assert (tmp_path / "png" / "SYNTHETIC.txt").exists()
  back, _ = prepare.build(str(tmp_path / "png"), str(tmp_path / "png" / "labels.csv"),
                          str(tmp_path / "png" / "rois.csv"), stages="5", progress=False)
  order = [list(data.image_id).index(i) for i in back.image_id]
  np.testing.assert_array_equal(back.rois, data.rois[order])
  np.testing.assert_array_equal(back.label, data.label[order])
