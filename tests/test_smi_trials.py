"""Support/query draws: disjoint, disjoint by patient, deterministic, sized."""
import numpy as np
import pytest

from maml_jax.smi import trials
from maml_jax.smi.errors import SMIDataError

CLASSES = ("1", "2", "3", "4", "5")


def paired_labels(seed=0):
  """120 images, 24 per class; patients own 1 or 2 images (pairs may span classes)."""
  rng = np.random.default_rng(seed)
  label = np.repeat(np.arange(5), 24)
  pid = np.arange(120).astype(object)
  order = rng.permutation(120)
  for a, b in order[:60].reshape(-1, 2):   # 30 patients with two images
    pid[b] = pid[a]
  return label, np.array([f"p{p}" for p in pid])


def test_sizes_class_major_and_disjoint():
  label, pid = paired_labels()
  t = trials.draw_trial(label, 5, 5, 10, seed=0, trial=0, patient_id=pid)
  assert t.support.shape == (25,) and t.query.shape == (50,)
  assert label[t.support].tolist() == np.repeat(np.arange(5), 5).tolist()
  assert label[t.query].tolist() == np.repeat(np.arange(5), 10).tolist()
  assert not set(t.support) & set(t.query)
  assert len(set(t.query)) == 50 and len(set(t.support)) == 25


def test_disjoint_by_patient_over_many_trials():
  label, pid = paired_labels()
  shared_without_patients = 0
  for trial in range(30):
    t = trials.draw_trial(label, 5, 5, 10, seed=3, trial=trial, patient_id=pid)
    assert not set(pid[t.support]) & set(pid[t.query])
    u = trials.draw_trial(label, 5, 5, 10, seed=3, trial=trial, patient_id=None)
    shared_without_patients += bool(set(pid[u.support]) & set(pid[u.query]))
  # Without patient ids the draw ignores patients, so pairs do get split: the
  # patient rule above is doing real work.
  assert shared_without_patients > 0


def test_trial_depends_only_on_seed_and_index():
  label, pid = paired_labels()
  a = trials.draw_trial(label, 5, 5, 10, seed=1, trial=4, patient_id=pid)
  b = trials.draw_trial(label, 5, 5, 10, seed=1, trial=4, patient_id=pid)
  c = trials.draw_trial(label, 5, 5, 10, seed=1, trial=5, patient_id=pid)
  d = trials.draw_trial(label, 5, 5, 10, seed=2, trial=4, patient_id=pid)
  assert np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query)
  assert not np.array_equal(a.support, c.support) and not np.array_equal(a.support, d.support)


def test_class_too_small_names_class_count_and_need():
  label = np.repeat(np.arange(5), [30, 30, 12, 30, 30])
  with pytest.raises(SMIDataError, match=r"shards: class 3 has 12; 5 shots \+ 15 queries = 20 images per class are needed"):
    trials.draw_trial(label, 5, 5, 15, seed=0, trial=0, where="shards", classes=CLASSES)


def test_empty_class():
  label = np.repeat(np.array([0, 1, 2, 4]), 30)
  with pytest.raises(SMIDataError, match=r"class 4 has 0 \(empty\)"):
    trials.check_class_sizes(label, CLASSES, 5, 15, where="shards")


def test_patients_can_exhaust_a_class():
  # Stages 4 and 5 have exactly shots + queries images each, from the same
  # four patients: the support images of one rule out queries of the other.
  label = np.repeat(np.arange(5), 4)
  pid = np.array([f"a{i}" for i in range(20)])
  pid[16:20] = pid[12:16]
  with pytest.raises(SMIDataError, match=r"class [45] has only \d images? from patients outside the support set"):
    for trial in range(20):
      trials.draw_trial(label, 5, 2, 2, seed=0, trial=trial, patient_id=pid, classes=CLASSES)


def test_fold_split_holds_out_support_images_without_overlap():
  for shots in (2, 5, 10):
    (tr_a, held_a), (tr_b, held_b) = trials.fold_split(shots, 5)
    assert len(tr_a) == len(tr_b) and len(held_a) == len(held_b)
    assert not set(tr_a) & set(held_a) and not set(tr_b) & set(held_b)
    assert len(set(held_a) | set(held_b)) == 5 * (shots - shots % 2)
