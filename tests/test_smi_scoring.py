"""One SMI scoring path: `adapt --dataset smi` and `experiment --table 3,4` give
the same accuracies on the same draw; the X-ray meta-training split; adapt's
baselines and messages."""
import argparse
import json

import numpy as np
import pytest

from maml_jax.commands import adapt
from maml_jax.experiment import grid, runner, sources, store, xray_tasks
from maml_jax.experiment.backbones import NetSpec
from maml_jax.experiment.meta_runs import LeakError
from maml_jax.experiment.store import SettingsMismatchError
from maml_jax import learner
from maml_jax.experiment import smi_trials
from maml_jax.smi import shards, synthetic, voting
from maml_jax.smi.summary import summarise

COUNTS = (9, 9, 8, 8, 8)


@pytest.fixture(scope="module")
def data():
  return synthetic.generate(1, counts=COUNTS, pairs=4)


def test_adapt_and_experiment_give_the_same_accuracies(workdir, data, tmp_path):
  lrn = learner.load_learner(workdir)
  res = smi_trials.run_trials(data, lrn, shots=2, queries=3, trials=3, seed=4, weight_folds=False, progress=False)
  ours = [voting.scores(p, y) for p, y in zip(res.probs, res.query_y)]
  summary = summarise(res, data.classes, data.roi_names, weight_folds=False)

  cfg = lrn.config
  s = runner.Settings(out=str(tmp_path / "exp"), shots=(2,), repeats=3, queries=3, seed=4, methods=("meta",),
                      backbones=("scratch",), meta_workdirs=(("meta", workdir),), progress=False,
                      spec=NetSpec(cfg.model, cfg.width, cfg.image_size, cfg.channels))
  runner.execute(s, "smi", source=sources.smi_source(data, queries=3, seed=4))
  recs = sorted(store.ResultsStore(s.out).for_dataset("smi"), key=lambda r: r["repeat"])
  assert [r["repeat"] for r in recs] == [0, 1, 2]
  for t, rec in enumerate(recs):
    # the same draw ...
    draw = sources.smi_source(data, queries=3, seed=4).draw(2, t)
    np.testing.assert_array_equal(res.query_rows[t], draw.query)
    assert rec["episode"] == draw.digest()
    # ... and the same scores, to the last bit
    assert rec["accuracy"] == ours[t]["accuracy"]
    assert rec["average_vote_accuracy"] == ours[t]["average_vote_accuracy"]
    assert rec["roi_accuracy"] == ours[t]["roi_accuracy"]
  assert summary["rules"]["majority"]["accuracy"]["per_trial"] == [r["accuracy"] for r in recs]
  assert summary["rules"]["average"]["accuracy"]["per_trial"] == [r["average_vote_accuracy"] for r in recs]

  # adapt's baselines go through the same grid: its meta column is the same again.
  comp = smi_trials.compare(data, lrn, shots=2, queries=3, trials=3, seed=4, progress=False)
  assert comp["columns"]["meta/scratch"]["per_repeat"] == pytest.approx([100 * r["accuracy"] for r in recs])
  assert set(comp["columns"]) == {"meta/scratch", "finetune/scratch", "base/scratch", "ncm/scratch"}
  assert comp["chance"] == 20.0
  # Given run_trials' results, the meta column is their vote, not a second adaptation.
  again = smi_trials.compare(data, lrn, shots=2, queries=3, trials=3, seed=4, progress=False, meta=res)
  assert again["columns"] == comp["columns"]


def parse(argv):
  ap = argparse.ArgumentParser()
  adapt.add_parser(ap.add_subparsers())
  return ap.parse_args(argv)


def test_adapt_shows_baselines_and_chance_and_the_shards(workdir, data, tmp_path, capsys):
  folder = str(tmp_path / "shards")
  shards.write_shards(folder, data)
  out = tmp_path / "r"
  rc = adapt.main(parse(["adapt", "--workdir", workdir, "--data", folder, "--shots", "2", "--queries", "3",
                         "--trials", "2", "--no-weighted", "--no-progress", "--out", str(out)]))
  printed = capsys.readouterr().out
  assert rc == 0
  assert f"SMI shards {folder}" in printed or "SYNTHETIC demo data" in printed
  for label in ("MAML adaptation", "fine-tuned like base learning", "base learning", "nearest class mean",
                "chance (1 / 5 stages)"):
    assert label in printed
  m = json.loads((out / "metrics.json").read_text())
  assert m["data"]["shards"].endswith("shards")
  report = (out / "report.md").read_text()
  assert "Beside baselines, on the same trials" in report and f"shards `{m['data']['shards']}`" in report
  # One verdict per baseline, from the paired difference over the same two trials.
  from maml_jax.stats import paired_difference
  cols = m["comparison"]["columns"]
  d = paired_difference(cols["meta/scratch"]["per_repeat"], cols["base/scratch"]["per_repeat"])
  row = next(l for l in report.splitlines() if l.startswith(f"| {cols['base/scratch']['label']} |"))
  assert row.endswith(f"| {d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]: meta-learned {d['verdict']} |")


def test_too_many_queries_names_the_shards_and_the_option(workdir, data, tmp_path, capsys):
  folder = str(tmp_path / "shards")
  shards.write_shards(folder, data)
  rc = adapt.main(parse(["adapt", "--workdir", workdir, "--data", folder, "--shots", "2",
                         "--out", str(tmp_path / "r")]))     # default 15 queries per stage: too many here
  err = capsys.readouterr().err
  assert rc == 2 and "Traceback" not in err
  assert f"shards {folder}" in err and "--queries" in err and "2 shots + 15 queries" in err


def test_xray_split_is_patient_disjoint_saved_and_checked(data, tmp_path):
  split = xray_tasks.split_patients(data, 0.5, seed=0)
  pid = np.asarray(data.patient_id)
  assert not set(pid[split["meta_rows"]]) & set(pid[split["scored_rows"]])
  assert sorted(split["meta_rows"] + split["scored_rows"]) == list(range(data.num_images))
  xray_tasks.save_or_check(str(tmp_path), split)
  xray_tasks.save_or_check(str(tmp_path), xray_tasks.split_patients(data, 0.5, seed=0))   # same: accepted
  with pytest.raises(SettingsMismatchError, match="another patient split"):
    xray_tasks.save_or_check(str(tmp_path), xray_tasks.split_patients(data, 0.5, seed=1))
  leaky = dict(split, meta_patients=split["meta_patients"] + split["scored_patients"][:1])
  with pytest.raises(LeakError, match="1 patients"):
    xray_tasks.check_disjoint(leaky)


def test_xray_task_classes_are_bone_age_bins_of_the_given_images(data):
  rows = np.arange(0, data.num_images, 2)
  edges = xray_tasks.age_edges(data, rows, 4)
  tc = xray_tasks.task_classes(data, rows, rois=6, edges=edges)
  assert len(tc.names) == len(edges) + 1 and tc.class_count.sum() == 6 * len(rows)
  images = tc.rows // 6
  assert set(images) == set(rows)
  for c, (start, n) in enumerate(zip(tc.class_start, tc.class_count)):
    ages = np.asarray(data.age_months)[images[start:start + n]]
    lo = -np.inf if c == 0 else edges[c - 1]
    hi = np.inf if c == len(edges) else edges[c]
    assert np.all((ages >= lo) & (ages < hi))
  assert np.all(tc.rows[:6] // 6 == tc.rows[0] // 6)            # an image's crops stay together


def test_grid_score_is_the_voting_score():
  probs = np.random.default_rng(0).dirichlet(np.ones(5), size=(7, 6)).astype(np.float32)
  y = np.arange(7) % 5
  assert grid.score(probs.reshape(42, 5), y, 6) == voting.scores(probs, y)
