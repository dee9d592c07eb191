"""`run.py classify`: your own episodes from folders of image files.

The preprocessing test copies real Omniglot drawings byte for byte out of the
embedded release into episode folders and checks that `classify` gives every
episode exactly the accuracy (and the probabilities) that adapting on the
Omniglot reader's own arrays gives.  The network is the tiny test network at
its untrained initialisation (a fixed function: the comparison needs no skill).
"""
import csv
import json
import os
import shutil
import zipfile

import jax
import numpy as np
import pytest

from maml_jax import cli, episode_folders as ef
from maml_jax.data import omniglot
from maml_jax.data.image_folder import read_image

EVAL_ZIP = os.path.join(omniglot.DEFAULT_ROOT, "images_evaluation.zip")
BG_ZIP = os.path.join(omniglot.DEFAULT_ROOT, "images_background.zip")
CHARACTERS = 6      # of the first evaluation alphabet
# 4 of the network's 5 outputs (the first 4 logits are read); 4 x 16 queries make one
# QUERY_BATCH, so the direct adaptation below shares the command's compilation.
OUTPUTS, SHOTS, QUERIES, EPISODES, WAYS = 5, 1, 16, 4, 4


def _characters(zip_path, n):
  """{'part/Alphabet/characterNN': sorted member names} of the first `n` characters in the zip."""
  with zipfile.ZipFile(zip_path) as z:
    names = sorted(m for m in z.namelist() if m.endswith(".png"))
  by = {}
  for m in names:
    by.setdefault("/".join(m.split("/")[:3]), []).append(m)
  return {k: by[k] for k in sorted(by)[:n]}


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
  """A small Omniglot release (6 evaluation characters and 1 background one, copied from
  the embedded zips), its decoded arrays from `load_omniglot`, and the raw bytes."""
  root = tmp_path_factory.mktemp("omniglot")
  raw = {}
  for zip_path, n in ((EVAL_ZIP, CHARACTERS), (BG_ZIP, 1)):
    with zipfile.ZipFile(zip_path) as z:
      for members in _characters(zip_path, n).values():
        for m in members:
          raw[m] = z.read(m)
          os.makedirs(root / os.path.dirname(m), exist_ok=True)
          (root / m).write_bytes(raw[m])
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("MAML_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    data = omniglot.load_omniglot(str(root), size=28, progress=False)
  return data, _characters(EVAL_ZIP, CHARACTERS), raw


@pytest.fixture(scope="module")
def omni_run(tmp_path_factory):
  """A workdir whose configuration is an Omniglot run (28x28x1, OUTPUTS outputs) with the tiny
  network's initial checkpoint."""
  from maml_jax import checkpoints
  from maml_jax.config import get_preset
  from maml_jax.models import model_for
  from maml_jax.train_step import init_state
  wd = str(tmp_path_factory.mktemp("run"))
  cfg = get_preset("tiny").replace(dataset="omniglot", image_size=28, ways=OUTPUTS)
  checkpoints.check_or_write_config(wd, cfg)
  state = init_state(model_for(cfg), cfg, jax.random.key(0), (28, 28, 1))
  ck = checkpoints.Checkpoints(wd, 1)
  ck.save(state)
  ck.close()
  return wd


def _write(folder, name, data: bytes):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, name), "wb") as f:
    f.write(data)


@pytest.fixture(scope="module")
def episodes(omni, tmp_path_factory):
  """EPISODES labelled episode folders of WAYS evaluation characters, SHOTS support and
  QUERIES query drawings each (the original PNG files), and the plan that made them:
  [(classes, {class: (support members, query members)})]."""
  _, chars, raw = omni
  root = tmp_path_factory.mktemp("episodes")
  rng = np.random.default_rng(0)
  plan = []
  for e in range(EPISODES):
    keys = sorted(rng.choice(sorted(chars), WAYS, replace=False).tolist())
    draw = {}
    for k in keys:
      picked = sorted(rng.choice(chars[k], SHOTS + QUERIES, replace=False).tolist())
      draw[k] = (picked[:SHOTS], picked[SHOTS:])
      for part, ms in (("support", draw[k][0]), ("query", draw[k][1])):
        for m in ms:
          _write(root / f"run{e:02d}" / part / k.split("/")[-1], os.path.basename(m), raw[m])
    plan.append((keys, draw))
  return str(root), plan


def _rows(data, key, members, all_members):
  """Rows of `data` holding `members` of class `key` (the reader keeps each class's members sorted)."""
  c = data.class_names.index(key)
  return [int(data.class_start[c]) + all_members.index(m) for m in members]


def test_the_reader_decodes_a_drawing_file_exactly_as_the_omniglot_reader(omni, tmp_path):
  data, chars, raw = omni
  key = sorted(chars)[2]
  m = chars[key][7]
  path = tmp_path / "x.png"
  path.write_bytes(raw[m])
  row = data.images[_rows(data, key, [m], chars[key])[0]]
  np.testing.assert_array_equal(ef.image_reader("omniglot", 28, 1)(str(path)), row)
  # The image-folder decoding (no inversion, bilinear) is not the model's preprocessing here.
  assert not np.array_equal(ef.image_reader("folder", 28, 1)(str(path)), row)


def test_classify_episodes_equals_adapting_on_the_readers_arrays(omni, omni_run, episodes, tmp_path, capsys):
  from maml_jax.episodes import to_float
  from maml_jax.learner import adapt_fn, load_learner
  data, chars, _ = omni
  root, plan = episodes
  out = tmp_path / "out"
  assert cli.main(["classify", "--workdir", omni_run, "--episodes", root, "--out", str(out)]) == 0
  printed, logged = capsys.readouterr()
  n = EPISODES * WAYS * (SHOTS + QUERIES)
  assert f"classifying {EPISODES} episode(s): started ({n} img)" in logged and "(done)" in logged
  res = json.loads((out / "results.json").read_text())
  rows = list(csv.DictReader(open(out / "predictions.csv")))
  assert res["preprocessing"] == "omniglot" and res["model"]["steps"] == 2
  assert res["model"]["outputs"] == OUTPUTS > WAYS == len(res["episodes"][0]["classes"])
  assert WAYS * QUERIES == ef.QUERY_BATCH
  assert [e["name"] for e in res["episodes"]] == [f"run{e:02d}" for e in range(EPISODES)]

  learner = load_learner(omni_run)
  direct = []
  for e, (keys, draw) in enumerate(plan):
    s = [r for k in keys for r in _rows(data, k, draw[k][0], chars[k])]
    q = [r for k in keys for r in _rows(data, k, draw[k][1], chars[k])]
    sy = np.repeat(np.arange(WAYS, dtype=np.int32), SHOTS)
    qy = np.repeat(np.arange(WAYS), QUERIES)
    _, probs = adapt_fn(learner, WAYS)(to_float(data.images[s]), sy, to_float(data.images[q]))
    probs = np.asarray(probs)
    direct.append(float(np.mean(probs.argmax(-1) == qy)))
    mine = [r for r in rows if r["episode"] == f"run{e:02d}"]
    assert [r["true_class"] for r in mine] == [k.split("/")[-1] for k in keys for _ in range(QUERIES)]
    got = np.array([[float(r[f"p_{k.split('/')[-1]}"]) for k in keys] for r in mine])
    np.testing.assert_allclose(got, probs, atol=2e-6)
    assert [r["predicted_class"] for r in mine] == [keys[i].split("/")[-1] for i in probs.argmax(-1)]
  assert [ep["accuracy"] for ep in res["episodes"]] == direct
  assert res["accuracy"]["accuracy"] == pytest.approx(np.mean(direct), abs=1e-12)
  assert res["accuracy"]["episodes"] == EPISODES and np.isfinite(res["accuracy"]["ci95"])
  assert f"{EPISODES} episodes" in printed and "95% t interval" in printed


def test_unlabelled_query_folder_gives_predictions_only(episodes, omni_run, tmp_path, capsys):
  """A flat query folder of more than one QUERY_BATCH: the 16 extra files are copies of
  the first 16 and get their probabilities (each query is classified on its own)."""
  root, plan = episodes
  flat = tmp_path / "flat"
  flat.mkdir()
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "run00", "query")) for f in fs]
  for f in files:
    shutil.copy(f, flat / os.path.basename(f))
  copies = sorted(os.listdir(flat))[:16]
  for f in copies:
    shutil.copy(flat / f, flat / f"zz_copy_{f}")
  out = tmp_path / "out"
  assert cli.main(["classify", "--workdir", omni_run, "--support", os.path.join(root, "run00", "support"),
                   "--query", str(flat), "--out", str(out), "--no-progress"]) == 0
  printed = capsys.readouterr().out
  res = json.loads((out / "results.json").read_text())
  rows = {r["file"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
  assert len(rows) == ef.QUERY_BATCH + 16 > ef.QUERY_BATCH
  assert res["accuracy"] is None and res["episodes"][0]["labelled"] is False
  assert sorted(rows) == sorted(os.listdir(flat)) and all(r["true_class"] == "" for r in rows.values())
  names = [k.split("/")[-1] for k in plan[0][0]]
  probs = lambda r: np.array([float(r[f"p_{c}"]) for c in names])
  for r in rows.values():
    assert probs(r).sum() == pytest.approx(1, abs=1e-4) and r["predicted_class"] == names[probs(r).argmax()]
  for f in copies:
    np.testing.assert_allclose(probs(rows[f"zz_copy_{f}"]), probs(rows[f]), atol=2e-6)
  assert "accuracy" not in printed and copies[0] in printed and "more (--out writes them all)" in printed


def test_folder_preprocessing_is_the_image_folder_fitting(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)
  from PIL import Image
  Image.fromarray(rgb).save(tmp_path / "a.png")
  for channels in (1, 3):
    np.testing.assert_array_equal(ef.image_reader("folder", 16, channels)(str(tmp_path / "a.png")),
                                  read_image(str(tmp_path / "a.png"), 16, channels))


def _bad(root, tmp_path):
  """Bad-input cases: name -> (argv builder, text the error must contain)."""
  run = os.path.join(root, "run00")

  def copy():
    dst = tmp_path / "eps"
    shutil.copytree(root, dst)
    return dst

  def missing():
    return ["--episodes", str(tmp_path / "nowhere")], str(tmp_path / "nowhere")

  def no_classes():
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "readme.txt").write_text("x")
    return ["--support", str(tmp_path / "s"), "--query", os.path.join(run, "query")], str(tmp_path / "s")

  def empty_class():
    dst = copy()
    (dst / "run01" / "support" / "zz_empty").mkdir()
    return ["--episodes", str(dst)], str(dst / "run01" / "support" / "zz_empty")

  def unreadable():
    dst = copy()
    cls = sorted(os.listdir(dst / "run02" / "query"))[0]
    bad = dst / "run02" / "query" / cls / "broken.png"
    bad.write_bytes(b"not a png at all")
    return ["--episodes", str(dst)], str(bad)

  def too_many():
    dst = tmp_path / "wide"
    for i in range(OUTPUTS + 1):
      src = os.path.join(run, "support", sorted(os.listdir(os.path.join(run, "support")))[i % WAYS])
      shutil.copytree(src, dst / "support" / f"c{i}")
    return ["--support", str(dst / "support"), "--query", str(dst / "support" / "c0")], f"{dst / 'support'}: 6 classes"

  def foreign_query_class():
    dst = copy()
    os.makedirs(dst / "run03" / "query" / "stranger")
    first = sorted(os.listdir(dst / "run03" / "query"))[0]
    f = sorted(os.listdir(dst / "run03" / "query" / first))[0]
    shutil.copy(dst / "run03" / "query" / first / f, dst / "run03" / "query" / "stranger" / f)
    return ["--episodes", str(dst)], str(dst / "run03" / "query" / "stranger")

  def no_query():
    dst = copy()
    shutil.rmtree(dst / "run01" / "query")
    return ["--episodes", str(dst)], f"{dst / 'run01'} has no query/"

  def no_support():
    dst = copy()
    shutil.rmtree(dst / "run03" / "support")
    return ["--episodes", str(dst)], f"{dst / 'run03'} has no support/"

  return {f.__name__: f for f in (missing, no_classes, empty_class, unreadable, too_many, foreign_query_class,
                                  no_query, no_support)}


@pytest.mark.parametrize("case", ["missing", "no_classes", "empty_class", "unreadable", "too_many",
                                  "foreign_query_class", "no_query", "no_support"])
def test_bad_input_is_one_error_line_naming_the_path_and_writes_nothing(case, episodes, omni_run, tmp_path, capsys):
  argv, says = _bad(episodes[0], tmp_path)[case]()
  out = tmp_path / "out"
  assert cli.main(["classify", "--workdir", omni_run, "--out", str(out), "--no-progress"] + argv) == 2
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: ") and "Traceback" not in err
  assert says in last
  assert not out.exists()


def test_options_that_cannot_go_together_are_refused(tmp_path, capsys):
  assert cli.main(["classify", "--episodes", str(tmp_path), "--support", str(tmp_path)]) == 2
  assert cli.main(["classify", "--support", str(tmp_path)]) == 2
  assert capsys.readouterr().err.count("error: ") == 2


def test_the_documented_lake_arrangement_makes_episodes_classify_reads(omni, omni_run, tmp_path):
  """docs/own-episodes.md's script on a small tree in the layout of Lake et al.'s all_runs
  (2 runs of WAYS characters, real drawings): every test image lands under its class."""
  import re
  import subprocess
  import sys
  _, chars, raw = omni
  doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "own-episodes.md")).read()
  script = tmp_path / "lake_to_episodes.py"
  script.write_text(re.search(r"```python\n(.*?)```", doc, re.S).group(1))
  src, truth = tmp_path / "all_runs", {}
  for r in range(2):
    run = f"run{r + 1:02d}"
    lines = []
    for k, key in enumerate(sorted(chars)[r:r + WAYS]):
      train, test = f"{run}/training/class{k + 1:02d}.png", f"{run}/test/item{WAYS - k:02d}.png"
      _write(src / run / "training", os.path.basename(train), raw[chars[key][0]])
      _write(src / run / "test", os.path.basename(test), raw[chars[key][1]])
      lines.append(f"{test} {train}\n")
      truth[(run, os.path.basename(test))] = f"class{k + 1:02d}"
    (src / run / "class_labels.txt").write_text("".join(sorted(lines)))
  dst = tmp_path / "lake_episodes"
  subprocess.run([sys.executable, str(script), str(src), str(dst)], check=True)
  out = tmp_path / "out"
  assert cli.main(["classify", "--workdir", omni_run, "--episodes", str(dst), "--out", str(out),
                   "--no-progress"]) == 0
  rows = list(csv.DictReader(open(out / "predictions.csv")))
  assert {(r["episode"], os.path.basename(r["file"])): r["true_class"] for r in rows} == truth
  res = json.loads((out / "results.json").read_text())
  assert [e["classes"] for e in res["episodes"]] == [[f"class{k + 1:02d}" for k in range(WAYS)]] * 2
