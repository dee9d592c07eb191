"""The experiment grid: shared episodes, resumption, tables, settings guard."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml_jax.data_sources import synthetic_classes
from maml_jax.experiment import backbones as bb
from maml_jax.experiment import grid, paper, runner, sources, store, tables
from maml_jax.smi import synthetic

SIZE = 12


@pytest.fixture(scope="module")
def splits():
  return {n: synthetic_classes(8, 12, SIZE, 1, 100 + i) for i, n in enumerate(("train", "val", "test"))}


@pytest.fixture(scope="module")
def projection():
  """A fixed random projection of the pixels as a stand-in pretrained backbone."""
  w = jax.random.normal(jax.random.key(0), (SIZE * SIZE, 16)) / SIZE
  return bb.Backbone("test-projection", jax.jit(lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w)), "test")


def settings(out, **kw):
  meta = dict(shots=2, queries=3, eval_queries=3, tasks=2, inner_steps=1, eval_inner_steps=2, inner_lr=0.1,
              val_every=2, val_episodes=2, test_episodes=2, checkpoint_every=2, log_every=1)
  base = dict(out=str(out), shots=(1, 2), repeats=2, queries=3, spec=bb.NetSpec("tiny", 1.0, SIZE, 1),
              dataset="synthetic", data_size=SIZE, meta_steps=2, head_steps=2,
              meta_overrides=tuple(sorted(meta.items())), progress=False)
  base.update(kw)
  return runner.Settings(**base)


def source_of(splits, seed=0):
  return sources.metadataset_source(splits["test"], ways=5, queries=3, seed=seed, description="SYNTHETIC test")


def test_draws_are_deterministic_and_seeded(splits):
  a, b, c = source_of(splits, 0), source_of(splits, 0), source_of(splits, 1)
  assert a.draw(2, 1).digest() == b.draw(2, 1).digest()
  assert a.draw(2, 1).digest() != a.draw(2, 0).digest()
  assert a.draw(2, 1).digest() != c.draw(2, 1).digest()
  d = a.draw(2, 1)
  assert not set(d.support) & set(d.query)
  assert d.support_y.tolist() == np.repeat(np.arange(5), 2).tolist()


def test_every_column_gets_the_same_episode(tmp_path, splits):
  src = source_of(splits)
  seen = {}

  def spy(column):
    def predict(task, key):
      seen.setdefault((len(task.support) // 5, column), []).append((task, np.asarray(jax.random.key_data(key))))
      return np.full((len(task.query), 5), 0.2)
    return predict

  columns = [("base", "pretrained"), ("base", "scratch"), ("meta", "scratch"), ("ncm", "pretrained")]
  st = store.ResultsStore(str(tmp_path))
  grid.run(src, columns, {c: spy(c) for c in columns}, st, shots=(1, 2), repeats=2, seed=0, progress=False)
  for k in (1, 2):
    for r in range(2):
      draw = src.draw(k, r)
      for c in columns:
        task, key = seen[(k, c)][r]
        np.testing.assert_array_equal(task.support, draw.support)
        np.testing.assert_array_equal(task.support_y, draw.support_y)
        np.testing.assert_array_equal(task.query, draw.query)
        np.testing.assert_array_equal(key, seen[(k, columns[0])][r][1])
  digests = {}
  for rec in st.records:
    digests.setdefault((rec["shots"], rec["repeat"]), set()).add(rec["episode"])
  assert all(len(v) == 1 for v in digests.values()) and len(digests) == 4


def test_baselines_and_meta_learning_share_episodes_end_to_end(tmp_path, splits, projection):
  """The real columns, meta-learned ones included (meta-trained here, tiny)."""
  kw = dict(source=source_of(splits), backbone=projection, meta_splits_override=splits)
  # one folder, three runs (columns are added to the store): second-order MAML of a head on
  # frozen features, first-order MAML of the scratch network (meta-trained here: first order
  # compiles in half the time), and base learning
  for methods, backbones in ((("meta",), ("pretrained",)), (("fomaml",), ("scratch",)), (("base",), ("pretrained",))):
    runner.execute(settings(tmp_path, shots=(2,), repeats=1, methods=methods, backbones=backbones, meta_steps=1),
                   "metadataset", **kw)
  recs = store.ResultsStore(str(tmp_path)).records
  assert sorted((x["method"], x["backbone"]) for x in recs) == [
      ("base", "pretrained"), ("fomaml", "scratch"), ("meta", "pretrained")]
  assert {x["episode"] for x in recs} == {source_of(splits).draw(2, 0).digest()}
  assert all(0.0 <= x["accuracy"] <= 1.0 and x["queries"] == 15 for x in recs)
  config = json.loads((tmp_path / "meta-train" / "fomaml-scratch" / "config.json").read_text())
  assert config["first_order"] and config["model"] == "tiny" and config["steps"] == 1
  report = (tmp_path / "report.md").read_text()
  assert "FOMAML scratch" in report and "(paper 80.0)" not in report   # 2 shots: no paper number
  assert (tmp_path / "accuracy_vs_shots_metadataset.png").stat().st_size > 1000


CHEAP = dict(methods=("base", "ncm", "linprobe"), backbones=("pretrained",))


def _table(out):
  return (out / "table2.md").read_text()


def _cells(out):
  recs = store.ResultsStore(str(out)).records
  return sorted((store.cell_key(r), r["accuracy"], r["episode"]) for r in recs)


def test_resumed_experiment_equals_uninterrupted(tmp_path, splits, projection, monkeypatch):
  full, part = tmp_path / "full", tmp_path / "part"
  kw = dict(source=source_of(splits), backbone=projection, meta_splits_override=splits)
  runner.execute(settings(full, **CHEAP), "metadataset", **kw)
  # a first run over a subset (one shot count, one repeat) ...
  runner.execute(settings(part, **CHEAP, shots=(2,), repeats=1), "metadataset", **kw)
  # ... then the whole grid, killed after 4 more cells ...
  real, calls = runner.predictor, []

  def dying(method, backbone, ctx):
    fn = real(method, backbone, ctx)

    def predict(task, key):
      if len(calls) == 4:
        raise KeyboardInterrupt
      calls.append(1)
      return fn(task, key)
    return predict

  monkeypatch.setattr(runner, "predictor", dying)
  with pytest.raises(KeyboardInterrupt):
    runner.execute(settings(part, **CHEAP), "metadataset", **kw)
  monkeypatch.undo()
  for line in open(part / store.RESULTS):
    json.loads(line)                                   # no half-written line
  assert len(store.ResultsStore(str(part)).records) == 3 + 4
  # ... and started again: only the missing cells are computed.
  r = runner.execute(settings(part, **CHEAP), "metadataset", **kw)
  assert r["cells"] == 12 - 7
  assert _cells(part) == _cells(full)
  assert _table(part) == _table(full)


def test_changed_settings_are_refused(tmp_path, splits, projection):
  kw = dict(source=source_of(splits), backbone=projection, meta_splits_override=splits)
  one = dict(methods=("ncm",), backbones=("pretrained",), shots=(1,), repeats=1)
  runner.execute(settings(tmp_path, **one), "metadataset", **kw)
  with pytest.raises(store.SettingsMismatchError, match="queries_per_class"):
    runner.execute(settings(tmp_path, **one, queries=4), "metadataset",
                   source=sources.metadataset_source(splits["test"], ways=5, queries=4, seed=0, description="SYNTHETIC test"),
                   backbone=projection, meta_splits_override=splits)


def test_changed_code_is_refused(tmp_path, splits, projection, monkeypatch):
  kw = dict(source=source_of(splits), backbone=projection, meta_splits_override=splits)
  one = dict(methods=("ncm",), backbones=("pretrained",), shots=(1,), repeats=1)
  runner.execute(settings(tmp_path, **one), "metadataset", **kw)
  runner.execute(settings(tmp_path, **dict(one, repeats=2)), "metadataset", **kw)      # same code: resumes
  monkeypatch.setattr(runner, "code_fingerprint", lambda: "edited")
  with pytest.raises(store.SettingsMismatchError, match="code"):
    runner.execute(settings(tmp_path, **dict(one, repeats=3)), "metadataset", **kw)


# The engine modules through which the meta-learned columns train and score.
TRAINER_FILES = ("train.py", "train_step.py", "evaluate.py", "config.py", "maml.py", "learner.py", "episodes.py",
                 "models/layers.py", "models/__init__.py", "inner_rules.py", "algorithms/__init__.py",
                 "algorithms/base.py", "algorithms/maml.py", "algorithms/anil.py", "algorithms/reptile.py",
                 "algorithms/protonet.py")


def _copy_sources(tmp_path):
  """The package and the dataset readers' sources (no data, no caches) under tmp_path."""
  import shutil
  import maml_jax
  package = os.path.dirname(maml_jax.__file__)
  only_py = lambda d, names: [n for n in names if n == "__pycache__" or
                              not (n.endswith(".py") or os.path.isdir(os.path.join(d, n)))]
  shutil.copytree(package, tmp_path / "maml_jax", ignore=only_py)
  shutil.copytree(os.path.join(os.path.dirname(package), "data"), tmp_path / "data", ignore=only_py)
  return tmp_path / "maml_jax"


def test_code_fingerprint_follows_the_imports_of_the_cell_code(tmp_path):
  package = _copy_sources(tmp_path)
  files = {os.path.relpath(p, package) for p in runner.code_files(str(package))}
  assert set(TRAINER_FILES) <= files
  assert "experiment/report.py" not in files and "commands/experiment.py" not in files
  base = runner.code_fingerprint(str(package))
  assert runner.code_fingerprint(str(package)) == base
  for name in TRAINER_FILES:   # each edit alone changes the fingerprint, so stored cells are refused
    path = package / name
    text = path.read_text()
    path.write_text(text + "\n# edited\n")
    assert runner.code_fingerprint(str(package)) != base, name
    path.write_text(text)
  assert runner.code_fingerprint(str(package)) == base
  (package / "experiment" / "report.py").write_text("# the report does not decide a cell's number\n")
  assert runner.code_fingerprint(str(package)) == base
  # A module that a cell module starts to import (here inside a function) is covered at once.
  (package / "newly_used.py").write_text("X = 1\n")
  methods = package / "experiment" / "methods.py"
  methods.write_text(methods.read_text() + "\ndef _later():\n  from maml_jax import newly_used\n")
  assert str(package / "newly_used.py") in runner.code_files(str(package))


def hand_records():
  recs = []
  for rep, (a, b) in enumerate([(0.5, 0.2), (0.7, 0.4), (0.6, 0.3)]):
    recs.append({"dataset": "metadataset", "method": "base", "backbone": "pretrained", "shots": 5, "repeat": rep,
                 "accuracy": a})
    recs.append({"dataset": "metadataset", "method": "ncm", "backbone": "scratch", "shots": 5, "repeat": rep,
                 "accuracy": b})
  recs.append({"dataset": "metadataset", "method": "meta", "backbone": "scratch", "shots": 20, "repeat": 0,
               "accuracy": 0.8125})
  recs.append({"dataset": "smi", "method": "meta", "backbone": "scratch", "shots": 20, "repeat": 0,
               "accuracy": 0.1})
  return recs


def test_table_writer_by_hand():
  summary = tables.summarise(hand_records(), "metadataset")
  lines = tables.accuracy_table(summary, "metadataset").splitlines()
  assert lines[0] == ("| shots | Base pre-trained | Base scratch | Meta pre-trained | Meta scratch | "
                      "NCM (cosine) scratch |")
  assert lines[1] == "| ---: | --- | --- | --- | --- | --- |"
  # mean 60.0, sd 10.0, n 3: t(0.975, 2) = 4.3027 -> half-width 24.8
  assert lines[2] == "| 5 | 60.0 ± 24.8 | – | – | – | 30.0 ± 24.8 |"
  assert lines[3] == "| 20 | – | – | – | 81.2 (n=1) | – |"       # fewer repeats than the fullest cell: said
  # The paper's numbers (other networks, other data) sit in rows of their own, never inside our cells.
  assert lines[4] == "| paper, 5 | *51.9* | *27.3* | *73.3* | *53.3* |  |"
  assert lines[5] == "| paper, 20 | *69.3* | *35.9* | *81.9* | *80.0* |  |"
  assert len(lines) == 6
  assert "VGG16" in tables.paper_note("smi") and "not the same networks" in tables.paper_note("smi")


def test_roi_table_and_vote_scores_by_hand():
  # 2 query images, 3 ROIs, 2 classes; image 0 (class 0): ROIs say 0, 0, 1; image 1 (class 1): 0, 1, 1
  probs = np.array([[[.9, .1], [.6, .4], [.2, .8]], [[.7, .3], [.4, .6], [.1, .9]]]).reshape(6, 2)
  s = grid.score(probs, np.array([0, 1]), rois=3)
  assert s["accuracy"] == 1.0 and s["roi_accuracy"] == [0.5, 1.0, 0.5]
  recs = [{"dataset": "smi", "method": "meta", "backbone": "scratch", "shots": 5, "repeat": 0, **s}]
  lines = tables.roi_table(tables.summarise(recs, "smi"), ("ring_dip", "middle_pip", "roi3"), 5).splitlines()
  assert lines[0] == "| ROI | paper (same joint) | Meta scratch |"
  # Paired by joint, not by position: the paper names ROI 4 (middle finger proximal) and ROI 2 only.
  assert lines[2] == "| ring_dip | – | 50.0 |"
  assert lines[3] == "| middle_pip | 69.9 (paper ROI 4 (middle finger proximal joint)) | 100.0 |"
  assert lines[4] == "| roi3 | 50.0 (paper ROI 3) | 50.0 |"
  assert lines[5] == "| 3-ROI vote | – | 100.0 |"


def test_store_rejects_duplicates_and_broken_lines(tmp_path):
  st = store.ResultsStore(str(tmp_path))
  rec = {"dataset": "smi", "method": "ncm", "backbone": "scratch", "shots": 5, "repeat": 0, "accuracy": 0.5}
  st.add(rec)
  with pytest.raises(ValueError, match="already"):
    st.add(dict(rec))
  with open(tmp_path / store.RESULTS, "a") as f:
    f.write('{"dataset": "smi", "meth\n')
  with pytest.raises(ValueError, match="results.jsonl:2"):
    store.ResultsStore(str(tmp_path))


def test_smi_source_uses_the_trial_draws():
  data = synthetic.generate(0).take(np.arange(0, 865, 3))   # a third of the SYNTHETIC demo, all classes
  src = sources.smi_source(data, queries=3, seed=0)
  from maml_jax.smi import trials
  t = trials.draw_trial(data.label, 5, 2, 3, seed=0, trial=1, patient_id=data.patient_id)
  d = src.draw(2, 1)
  np.testing.assert_array_equal(d.support, t.support)
  np.testing.assert_array_equal(d.query, t.query)
  rows = src.crop_rows(d.support[:1])
  np.testing.assert_array_equal(src.crops[rows][..., 0], data.rois[d.support[0]])
  assert src.synthetic and src.rois == 6


def test_paper_numbers_match_the_paper():
  assert paper.PAPER_TABLE2[20][("meta", "scratch")] == 80.0
  assert paper.PAPER_TABLE3[5][("base", "scratch")] == 23.1
  assert paper.PAPER_TABLE4[3] == 69.9


def _parse(argv):
  from maml_jax.cli import build_parser
  return build_parser().parse_args(["experiment"] + argv)


@pytest.mark.parametrize("argv, message", [
    (["--table", "5"], "--table 5"),
    (["--meta-workdir", "maml=runs/x"], "METHOD=DIR"),
    (["--pretrained", "vgg16"], "--vgg16-weights"),
    (["--meta-set", "inner_steps=two"], "inner_steps takes an integer"),
    (["--meta-set", "nonsense=1"], "FIELD=VALUE"),
])
def test_bad_command_lines_say_what_is_wrong(argv, message, capsys):
  from maml_jax.cli import main
  assert main(["experiment"] + argv) == 2
  assert message in capsys.readouterr().err


def test_command_line_settings():
  from maml_jax.commands import experiment
  s = experiment.settings_from_args(_parse(["--table", "3,4", "--shots", "5,20", "--methods", "ncm,meta",
                                            "--workdir", "w1", "--meta-workdir", "anil=w2", "--meta-set",
                                            "shots=5", "--width", "0.5"]))
  assert s.shots == (5, 20) and s.methods == ("ncm", "meta") and s.pretrained == "efficientnet"
  assert dict(s.meta_workdirs) == {"meta": "w1", "anil": "w2"}
  assert dict(s.meta_overrides) == {"shots": 5} and s.spec.width == 0.5
  assert s.columns()[0] == ("meta", "pretrained")


def test_two_columns_get_one_verdict_from_their_paired_difference():
  # Overlapping intervals but a consistent lead on the same draws: one verdict, "ahead".
  from maml_jax.experiment import report
  a = {"mean": 50.0, "ci95": 6.0, "std": 4.0, "n": 5, "per_repeat": [44.0, 48.0, 50.0, 52.0, 56.0]}
  b = {"mean": 48.0, "ci95": 6.0, "std": 4.0, "n": 5, "per_repeat": [42.0, 46.0, 48.0, 50.0, 54.0]}
  line = report._versus("meta", a, "base", b)
  assert "paired difference over the same 5 draws +2.0 points" in line and line.endswith(": ahead")
  assert "do not separate" not in line and "overlap" not in line
  one = {**a, "n": 1, "per_repeat": [50.0]}
  assert "paired" not in report._versus("meta", one, "base", b)


def test_an_impossible_draw_is_refused_before_anything_is_written(tmp_path, capsys):
  from maml_jax.cli import main
  out = tmp_path / "ex"
  assert main(["experiment", "--table", "3", "--shots", "400", "--repeats", "1", "--out", str(out),
               "--no-progress"]) == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith("error: table 3/4: ") and "400 shots + " in err and "images per class are needed" in err
  assert not out.exists()   # no experiment.json: the corrected rerun is not refused


def test_paired_difference_of_repeats():
  from maml_jax.stats import paired_difference
  d = paired_difference([50.0, 60.0, 70.0, 80.0], [48.0, 58.0, 68.0, 78.5])
  assert d["n"] == 4 and abs(d["mean"] - 1.875) < 1e-12 and 1.4 < d["lo"] < d["hi"] < 2.3 and d["verdict"] == "ahead"
  assert paired_difference([1.0, 2.0], [2.0, 1.0])["verdict"] == "not separated by these repeats"
  assert paired_difference([50.0], [40.0]) is None
