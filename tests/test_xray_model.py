"""The X-ray model (`meta-train --preset xray`) and the supervised bone-age answer
beside it: ridge regression, stage boundaries, the patient split and its leak
checks, and meta-train -> adapt -> predict through the command line, on small
SYNTHETIC shards."""
import csv
import json
import os

import numpy as np
import pytest

from maml_jax.cli import main
from maml_jax.smi import bone_age, demo_images, predictor, shards, synthetic, xray_model
from maml_jax.smi.errors import SMIDataError


# ------------------------------------------------------------ the age model

def _linear_ages(n, d=300, seed=0, noise=3.0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  w = np.zeros(d)
  w[:20] = rng.normal(size=20)
  age = 100 + 10 * x @ w + noise * rng.normal(size=n)
  return x, age


def test_ridge_recovers_ages_and_its_leave_one_out_error_is_honest():
  x, age = _linear_ages(400)
  m = bone_age.fit_ridge(x[:300], age[:300])
  held = np.abs(bone_age.predict_age(m, x[300:]) - age[300:]).mean()
  assert held < 0.3 * np.std(age)               # learns the ages (the mean alone misses by ~0.8 std)
  assert 0.6 * held < m.loo_mae < 1.6 * held     # its leave-one-out error predicts the held-out one


def test_leave_one_out_closed_form_equals_refitting_without_each_image():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(25, 40))
  z -= z.mean(0)                                   # centred columns, as fit_ridge's standardisation gives
  y = rng.normal(size=25) * 10 + 50
  lam = 3.0
  loo = bone_age.loo_residuals(z, y, lam)
  for i in (0, 11, 24):
    zi, yi = np.delete(z, i, 0), np.delete(y, i)
    a = np.hstack([np.ones((24, 1)), zi])         # free intercept, penalised weights
    pen = lam * np.eye(41)
    pen[0, 0] = 0
    beta = np.linalg.solve(a.T @ a + pen, a.T @ yi)
    assert abs((y[i] - (beta[0] + z[i] @ beta[1:])) - loo[i]) < 1e-8


def test_stages_of_age_and_support_means():
  assert bone_age.stages_of_age([0, 53.9, 54, 100, 200], [54, 96, 138, 180]).tolist() == [0, 0, 1, 2, 4]
  # Predicted ages shifted by +30 months (another site): the support means absorb the shift.
  true = np.array([20, 70, 110, 150, 200] * 4, float)
  y = np.tile(np.arange(5), 4)
  shifted = true + 30
  assert (bone_age.stages_of_age(shifted, [54, 96, 138, 180]) == y).mean() < 0.5
  p = bone_age.support_means(shifted, y, shifted + 1, 5)
  assert p.shape == (20, 5) and (p.argmax(-1) == y).all()


def test_stage_boundaries_from_the_scheme_or_the_training_ages():
  scheme = {"kind": "bone_age_stages", "age_boundaries_months": [54.0, 96.0]}
  assert bone_age.stage_boundaries(scheme, 3) == ([54.0, 96.0], "the stages' own age boundaries")
  ages, y = np.array([10, 20, 30, 100, 110, 200, 210.]), np.array([0, 0, 0, 1, 1, 2, 2])
  b, how = bone_age.stage_boundaries({"name": "smi5"}, 3, ages, y)
  assert b == [(20 + 105) / 2, (105 + 205) / 2] and "median" in how
  with pytest.raises(SMIDataError, match="do not increase"):
    bone_age.stage_boundaries({"name": "smi5"}, 3, ages, np.array([2, 2, 2, 1, 1, 0, 0]))
  with pytest.raises(SMIDataError, match="not age ranges"):
    bone_age.stage_boundaries({"name": "smi5"}, 3)


def test_the_regression_refuses_missing_ages_and_too_few_images():
  x, age = _linear_ages(30)
  with pytest.raises(SMIDataError, match="needs ages"):
    bone_age.fit_ridge(x, None)
  bad = age.copy()
  bad[3] = np.nan
  with pytest.raises(SMIDataError, match="1 images have no age"):
    bone_age.fit_ridge(x, bad)
  with pytest.raises(SMIDataError, match="too few"):
    bone_age.fit_ridge(x[:5], age[:5])


# ------------------------------------------------------------ the patient split

def _pool(seed, counts, prefix):
  data = synthetic.generate(seed, counts=counts)
  pid = np.char.add(prefix, np.asarray(data.patient_id).astype(str))
  iid = np.char.add(prefix, np.asarray(data.image_id).astype(str))
  import dataclasses
  return dataclasses.replace(data, patient_id=pid, image_id=iid)


def test_patient_split_is_disjoint_seeded_and_checked(tmp_path):
  data = synthetic.generate(0, counts=(20, 20, 20, 20, 20), pairs=10)
  a = xray_model.split_patients(data, seed=0)
  assert a == xray_model.split_patients(data, seed=0)
  pid = xray_model.patient_ids(data)
  sides = [set(pid[a[f"{s}_rows"]]) for s in xray_model.SIDES]
  assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
  assert sum(len(a[f"{s}_rows"]) for s in xray_model.SIDES) == data.num_images
  xray_model.save_or_check(str(tmp_path), a)
  xray_model.save_or_check(str(tmp_path), a)           # the same split passes
  with pytest.raises(xray_model.LeakError, match="another patient split"):
    xray_model.save_or_check(str(tmp_path), xray_model.split_patients(data, seed=1))
  leaky = dict(a, val_patients=a["val_patients"] + a["train_patients"][:2])
  with pytest.raises(xray_model.LeakError, match="2 patients are on both sides"):
    xray_model.save_or_check(str(tmp_path / "new"), leaky)


# ------------------------------------------------------------ through the commands

@pytest.fixture(scope="module")
def pools(tmp_path_factory):
  """Two SYNTHETIC pools with distinct patients: A to train on, B the user's."""
  root = tmp_path_factory.mktemp("pools")
  a, b = _pool(0, (40, 40, 40, 40, 40), "A"), _pool(1, (12, 12, 12, 12, 12), "B")
  shards.write_shards(str(root / "A"), a)
  shards.write_shards(str(root / "B"), b)
  return root, a, b


XRAY_TINY = ["--image-size", "32", "--shots", "6", "--queries", "3", "--eval-queries", "3", "--steps", "4",
             "--val-every", "2", "--checkpoint-every", "2", "--val-episodes", "4", "--test-episodes", "6",
             "--log-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def xray_workdir(pools):
  root, _, _ = pools
  wd = str(root / "xray-run")
  assert main(["meta-train", "--preset", "xray", "--data", str(root / "A"), "--workdir", wd] + XRAY_TINY) == 0
  return wd


def test_meta_train_writes_a_workdir_with_its_split_and_age_model(xray_workdir, pools):
  _, a, _ = pools
  files = set(os.listdir(xray_workdir))
  assert {"config.json", "results.json", "patients.json", "age_model.npz", "best", "checkpoints"} <= files
  split = xray_model.read_split(xray_workdir)
  assert split["roi_names"] == list(a.roi_names)
  assert not set(split["train_patients"]) & set(split["test_patients"])
  results = json.load(open(os.path.join(xray_workdir, "results.json")))
  assert 0 <= results["test_accuracy"] <= 1 and results["test_episodes"] == 6
  model, boundaries, _ = xray_model.load_age_model(xray_workdir)
  assert model.n_train == len(split["train_rows"]) + len(split["val_rows"]) and len(boundaries) == 4
  cfg = json.load(open(os.path.join(xray_workdir, "config.json")))
  assert cfg["model"] == "effnet_head" and cfg["dataset"] == "smi"


def test_adapt_scores_the_xray_model_beside_the_supervised_answer_and_predict_uses_it(
    xray_workdir, pools, tmp_path, capsys):
  root, _, b = pools
  out, save = tmp_path / "report", tmp_path / "model"
  rc = main(["adapt", "--workdir", xray_workdir, "--data", str(root / "B"), "--shots", "2", "--queries", "2",
             "--trials", "2", "--no-progress", "--out", str(out), "--save", str(save)])
  assert rc == 0
  text = capsys.readouterr().out
  assert "Meta on X-ray tasks" in text and "Supervised age, no support" in text and "support means" in text
  res = json.load(open(out / "results.json"))
  cells = res["datasets"]["smi"]["summary"]["accuracy"]
  assert {"metaxr/pretrained/2", "agereg/pretrained/2", "agemeans/pretrained/2", "base/pretrained/2",
          "ncm/pretrained/2", "linprobe/pretrained/2"} <= set(cells)
  assert all(len(c["per_repeat"]) == 2 and 0 <= c["mean"] <= 100 for c in cells.values())
  kept = predictor.load(str(save))
  assert kept.config.model == "effnet_head" and kept.support_rois.shape[1] == 6

  # predict on PNGs of some of B's images with their ROI centres.
  sub = b.take(np.arange(4))
  demo_images.write_demo_images(str(tmp_path / "png"), sub)
  rc = main(["predict", "--model", str(save), "--images", str(tmp_path / "png"), "--rois",
             str(tmp_path / "png" / "rois.csv"), "--csv", str(tmp_path / "p.csv")])
  assert rc == 0
  rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
  assert [r["image_id"] for r in rows] == sorted(sub.image_id.tolist())
  # The command's stages are the kept model's on the same crops.
  direct = predictor.stage_images(kept, sub.rois)
  order = np.argsort(sub.image_id)
  assert [r["stage"] for r in rows] == [kept.classes[s] for s in direct["stage"][order]]


def test_adapt_refuses_the_models_own_patients(xray_workdir, pools, tmp_path, capsys):
  root, _, _ = pools
  out = tmp_path / "r"
  rc = main(["adapt", "--workdir", xray_workdir, "--data", str(root / "A"), "--trials", "2", "--no-progress",
             "--out", str(out)])
  err = capsys.readouterr().err
  assert rc == 2 and "share" in err and "patients" in err and "would leak" in err
  assert not out.exists()


def test_adapt_refuses_shards_of_other_rois(xray_workdir, pools, tmp_path, capsys):
  root, _, b = pools
  import dataclasses
  whole = dataclasses.replace(b, rois=b.rois[:, :1], roi_names=("whole_hand",))
  shards.write_shards(str(tmp_path / "whole"), whole)
  out = tmp_path / "r"
  rc = main(["adapt", "--workdir", xray_workdir, "--data", str(tmp_path / "whole"), "--trials", "2",
             "--no-progress", "--out", str(out)])
  err = capsys.readouterr().err
  assert rc == 2 and "trained on the ROIs" in err and "whole_hand" in err
  assert not out.exists()


def test_meta_train_refuses_too_few_patients_and_leaves_nothing(tmp_path, capsys):
  small = _pool(2, (3, 3, 3, 3, 3), "S")
  shards.write_shards(str(tmp_path / "S"), small)
  wd = tmp_path / "run"
  rc = main(["meta-train", "--preset", "xray", "--data", str(tmp_path / "S"), "--workdir", str(wd)] + XRAY_TINY)
  assert rc == 2 and "classes with" in capsys.readouterr().err
  assert not wd.exists()


def test_meta_train_xray_needs_shards(tmp_path, capsys):
  rc = main(["meta-train", "--preset", "xray", "--workdir", str(tmp_path / "run")] + XRAY_TINY)
  assert rc == 2 and "--data SHARDS" in capsys.readouterr().err


def test_shards_without_ages_train_on_stages_and_adapt_drops_the_age_columns(pools, tmp_path, capsys):
  import dataclasses
  root, a, b = pools
  no_age = dataclasses.replace(a, age_months=None)
  shards.write_shards(str(tmp_path / "noage"), no_age)
  wd = str(tmp_path / "run")
  assert main(["meta-train", "--preset", "xray", "--data", str(tmp_path / "noage"), "--workdir", wd] + XRAY_TINY) == 0
  out = capsys.readouterr().out
  assert "no supervised age model" in out and not os.path.exists(os.path.join(wd, "age_model.npz"))
  assert xray_model.read_split(wd)["bin_edges_months"] is None
  rc = main(["adapt", "--workdir", wd, "--data", str(root / "B"), "--shots", "2", "--queries", "2", "--trials", "2",
             "--no-progress", "--no-baselines", "--out", str(tmp_path / "r")])
  assert rc == 0
  cells = json.load(open(tmp_path / "r" / "results.json"))["datasets"]["smi"]["summary"]["accuracy"]
  assert set(cells) == {"metaxr/pretrained/2"}


def test_experiment_across_pools_refuses_shared_patients_other_rois_and_other_stages(pools):
  import dataclasses
  from maml_jax.experiment import xray_tasks
  from maml_jax.experiment.meta_runs import LeakError as GridLeak
  _, a, b = pools
  split = xray_tasks.cross_split(a, b, "A", "B")
  assert split["meta_rows"] == list(range(a.num_images)) and split["scored_rows"] == list(range(b.num_images))
  both = dataclasses.replace(b, patient_id=np.concatenate([a.patient_id[:3], b.patient_id[3:]]))
  with pytest.raises(GridLeak, match="share 3 patients"):
    xray_tasks.cross_split(a, both, "A", "B")
  with pytest.raises(ValueError, match="ROIs"):
    xray_tasks.cross_split(a, dataclasses.replace(b, rois=b.rois[:, :1], roi_names=("whole_hand",)), "A", "B")
  with pytest.raises(ValueError, match="same --age-boundaries"):
    xray_tasks.cross_split(a, dataclasses.replace(b, classes=("1", "2", "3", "4", "5", "6")), "A", "B")


def test_experiment_takes_the_xray_model(xray_workdir, pools, tmp_path):
  root, _, _ = pools
  out = tmp_path / "exp"
  rc = main(["experiment", "--table", "3", "--data", str(root / "B"), "--xray-workdir", xray_workdir,
             "--methods", "metaxr,agemeans,ncm", "--backbones", "pretrained", "--shots", "2", "--repeats", "2",
             "--queries", "2", "--no-progress", "--out", str(out)])
  assert rc == 0
  res = json.load(open(out / "results.json"))["datasets"]["smi"]
  assert set(res["summary"]["accuracy"]) == {"metaxr/pretrained/2", "agemeans/pretrained/2", "ncm/pretrained/2"}
  assert "the X-ray model in" in res["settings"]["models"]["metaxr/pretrained"]
  assert res["settings"]["settings"]["pretrained_backbone"] == "efficientnet-lite0-32px"   # the model's own features


def test_a_refused_run_records_nothing_and_the_corrected_rerun_goes_through(xray_workdir, pools, tmp_path, capsys):
  """Stages the 5-way head cannot take are refused after the features are
  computed, but before any settings or split are recorded: the same --out then
  takes the corrected shards."""
  import dataclasses
  root, _, b = pools
  six = dataclasses.replace(b, classes=b.classes + ("6",), label=np.where(np.arange(b.num_images) < 10, 5, b.label))
  shards.write_shards(str(tmp_path / "six"), six)
  out = tmp_path / "exp"
  common = ["--xray-workdir", xray_workdir, "--methods", "metaxr,ncm", "--backbones", "pretrained", "--table", "3",
            "--shots", "2", "--repeats", "2", "--queries", "2", "--no-progress", "--out", str(out)]
  assert main(["experiment", "--data", str(tmp_path / "six")] + common) == 2
  assert "6 classes" in capsys.readouterr().err
  assert set(os.listdir(out)) <= {"cache"}
  assert main(["experiment", "--data", str(root / "B")] + common) == 0
