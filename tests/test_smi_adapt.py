"""End to end: adapt a (tiny, untrained) meta-model to SMI ROI shards, report,
save, and predict with the kept model."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from maml_jax.cli import main
from maml_jax.config import get_preset
from maml_jax.models import build_model
from maml_jax import learner
from maml_jax.experiment import smi_trials
from maml_jax.smi import demo_images, predictor, shards, synthetic

COUNTS = (12, 12, 10, 10, 10)


def parse(module, argv):
  """A command line for `cli.main` (the real dispatch); `module` names the command."""
  assert argv[0] == module
  return argv


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """A small SYNTHETIC shard set (54 images, some patients with two images)."""
  folder = str(tmp_path_factory.mktemp("shards"))
  data = synthetic.generate(0, counts=COUNTS, pairs=6)
  shards.write_shards(folder, data)
  return folder, data


def test_to_model_input_shapes_and_range():
  rois = np.stack([np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8)])
  x = learner.to_model_input(rois, 12, 3)
  assert x.shape == (2, 12, 12, 3) and x.dtype == np.float32
  np.testing.assert_allclose(np.asarray(x[0]), 0.0)
  np.testing.assert_allclose(np.asarray(x[1]), 1.0, atol=1e-6)
  assert learner.to_model_input(rois, 64, 1).shape == (2, 64, 64, 1)


def test_adapt_command_writes_report_and_keeps_a_model(workdir, small, tmp_path, capsys):
  folder, data = small
  out, save = tmp_path / "report", tmp_path / "model"
  rc = main(parse("adapt", ["adapt", "--workdir", workdir, "--data", folder, "--shots", "2", "--queries", "3",
                                "--trials", "2", "--out", str(out), "--save", str(save)]))
  printed = capsys.readouterr().out
  assert rc == 0 and "SYNTHETIC" in printed and "majority" in printed
  assert sorted(os.listdir(out)) == ["confusion.png", "metrics.json", "report.md", "roi_accuracy.png"]
  m = json.loads((out / "metrics.json").read_text())
  assert m["synthetic"] is True and m["protocol"]["patient_disjoint"] is True
  assert set(m["rules"]) == {"majority", "average", "weighted"} and list(m["per_roi"]) == list(data.roi_names)
  for rule in m["rules"].values():
    conf = np.array(rule["confusion"])
    assert conf.sum() == 2 * 15 and (conf.sum(1) == 2 * 3).all()    # 2 trials x 3 queries x 5 classes
    assert np.trace(conf) / conf.sum() == pytest.approx(rule["accuracy"]["mean"])
    assert len(rule["accuracy"]["per_trial"]) == 2
  for t, (s, q) in enumerate(zip(m["trials"]["support_rows"], m["trials"]["query_rows"])):
    assert not set(data.patient_id[s]) & set(data.patient_id[q])
  report = (out / "report.md").read_text()
  assert "SYNTHETIC DEMO DATA" in report and "Table 4" in report and "quadratic kappa" in report
  kept = predictor.load(str(save))
  assert kept.synthetic and kept.roi_names == data.roi_names and kept.support_rois.shape == (10, 6, 64, 64)
  assert kept.info["trial"] == 0


def test_saved_model_predicts_like_the_trial_and_images_are_independent(workdir, small, tmp_path, capsys):
  folder, data = small
  lrn = learner.load_learner(workdir)
  res = smi_trials.run_trials(data, lrn, shots=2, queries=3, trials=1, weight_folds=False, progress=False,
                              keep_first=True)
  predictor.save(str(tmp_path / "m"), config=lrn.config, params=res.first_params,
                 support_rois=res.first_support[0], support_y=res.first_support[1], roi_names=data.roi_names,
                 classes=data.classes, weights=res.weights[0], per_roi=False, synthetic=True)
  kept = predictor.load(str(tmp_path / "m"))
  q = res.query_rows[0]
  probs = predictor.predict_rois(kept, data.rois[q])
  np.testing.assert_allclose(probs, res.probs[0], atol=1e-5)
  # Batch-norm statistics come from the support rows only: an image scored
  # alone gets the same probabilities as in the batch of all queries.
  np.testing.assert_allclose(predictor.predict_rois(kept, data.rois[q[4:5]])[0], res.probs[0, 4], atol=1e-5)

  # The predict command on PNG files made from the same query images.
  sub = data.take(q)
  demo_images.write_demo_images(str(tmp_path / "png"), sub)
  rc = main(parse("predict", ["predict", "--model", str(tmp_path / "m"), "--images", str(tmp_path / "png"),
                                    "--rois", str(tmp_path / "png" / "rois.csv"), "--csv", str(tmp_path / "p.csv")]))
  assert rc == 0 and "SYNTHETIC" in capsys.readouterr().out
  rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
  assert [r["image_id"] for r in rows] == sorted(sub.image_id.tolist())
  for r in rows:
    k = sub.image_id.tolist().index(r["image_id"])
    expect = res.probs[0, k].mean(0)
    got = np.array([float(r[f"p_stage_{c}"]) for c in data.classes])
    np.testing.assert_allclose(got, expect, atol=2e-4)
    votes = [r[f"vote_{n}"] for n in data.roi_names]
    assert votes == [data.classes[v] for v in res.probs[0, k].argmax(-1)]


def test_per_roi_learners(workdir, small):
  _, data = small
  lrn = learner.load_learner(workdir)
  a = smi_trials.run_trials(data, lrn, shots=2, queries=3, trials=1, weight_folds=False, progress=False)
  b = smi_trials.run_trials(data, lrn, shots=2, queries=3, trials=1, per_roi=True, weight_folds=False,
                            progress=False)
  assert a.probs.shape == b.probs.shape == (1, 15, 6, 5)
  np.testing.assert_array_equal(a.query_rows, b.query_rows)          # same draw
  assert not np.allclose(a.probs, b.probs)                           # different adaptation
  np.testing.assert_allclose(b.probs.sum(-1), 1.0, atol=1e-5)


def test_too_few_images_for_the_shots(workdir, small, tmp_path, capsys):
  folder, _ = small
  rc = main(parse("adapt", ["adapt", "--workdir", workdir, "--data", folder, "--shots", "5",
                                "--out", str(tmp_path / "r")]))
  err = capsys.readouterr().err
  assert rc == 2 and "Traceback" not in err
  assert "class 3 has 10" in err and "5 shots + 15 queries = 20 images per class are needed" in err
  assert not (tmp_path / "r").exists()


def test_corrupt_shards_and_missing_workdir(workdir, small, tmp_path, capsys):
  folder, _ = small
  bad = tmp_path / "bad"
  bad.mkdir()
  for f in os.listdir(folder):
    shutil.copy(os.path.join(folder, f), bad / f)
  raw = bytearray((bad / "shard-00000.npz").read_bytes())
  raw[-100] ^= 0x10
  (bad / "shard-00000.npz").write_bytes(bytes(raw))
  rc = main(parse("adapt", ["adapt", "--workdir", workdir, "--data", str(bad)]))
  assert rc == 2 and "shard-00000.npz: sha256" in capsys.readouterr().err
  rc = main(parse("adapt", ["adapt", "--workdir", str(tmp_path / "nowhere")]))
  assert rc == 2 and "nowhere: no such workdir" in capsys.readouterr().err


def test_more_classes_than_outputs(small):
  _, data = small
  cfg = get_preset("tiny")                      # 3-way
  lrn = learner.Learner(cfg, build_model(cfg.model, cfg.ways), None, 1)
  with pytest.raises(ValueError, match="5 classes, but the meta-trained network has only 3 outputs"):
    smi_trials.run_trials(data, lrn, shots=2, queries=3, trials=1, progress=False)


def test_meta_test_episodes(workdir, tmp_path, capsys):
  rc = main(parse("adapt", ["adapt", "--workdir", workdir, "--dataset", "meta-test", "--trials", "4",
                                "--queries", "2", "--out", str(tmp_path / "mt")]))
  assert rc == 0
  m = json.loads((tmp_path / "mt" / "metrics.json").read_text())
  assert m["episodes"] == 4 and len(m["accuracy"]["per_episode"]) == 4 and m["synthetic"] is True
  assert all(0 <= a <= 1 for a in m["accuracy"]["per_episode"])
  assert "SYNTHETIC" in capsys.readouterr().out
