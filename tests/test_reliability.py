"""Runs that survive kills, damaged checkpoints and NaN; configurations refused before anything is written."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from maml_jax import checkpoints, train
from maml_jax.checkpoints import (CheckpointError, Checkpoints, IncompatibleRunError, config_differences,
                                  load_trained)
from maml_jax.config import ConfigError, get_preset
from maml_jax.episodes import EpisodeSampler
from conftest import train_killed_at_best_json


def _equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _steps(path):
  return [json.loads(l)["step"] for l in open(path)]


def test_kill_after_best_save_before_latest_resumes(tmp_path, monkeypatch):
  # The orbax StepAlreadyExistsError of the old layout: best saved, killed before
  # best.json and the latest checkpoint; the rerun saved best at the same step.
  cfg = get_preset("tiny").replace(steps=4, val_every=1, checkpoint_every=2)
  straight, w = str(tmp_path / "straight"), str(tmp_path / "killed")
  train.train_and_evaluate(cfg, straight, progress=False)
  train_killed_at_best_json(monkeypatch, cfg, w, lambda best: best["step"] >= 3)
  assert max(int(s) for s in os.listdir(os.path.join(w, "best"))) >= 3 > max(
      int(s) for s in os.listdir(os.path.join(w, "checkpoints")))
  r = train.train_and_evaluate(cfg, w, resume=True, progress=False)
  assert _steps(os.path.join(w, "metrics.jsonl")) == [1, 2, 3, 4]   # no duplicates
  ref = json.load(open(os.path.join(straight, "results.json")))
  assert r["test_accuracy"] == ref["test_accuracy"] and r["checkpoint_step"] == ref["checkpoint_step"]
  for which in ("latest", "best"):
    a, b = load_trained(straight, which), load_trained(w, which)
    assert a.step == b.step and _equal(a.meta_params, b.meta_params)


def _damage(folder):
  """Truncates every file of a checkpoint folder to a third."""
  for dp, _, fs in os.walk(folder):
    for f in fs:
      p = os.path.join(dp, f)
      data = open(p, "rb").read()
      open(p, "wb").write(data[:len(data) // 3])


def test_damaged_latest_checkpoint_falls_back_to_an_older_one(tmp_path, capsys):
  cfg = get_preset("tiny").replace(steps=4, val_every=0, checkpoint_every=2, keep_checkpoints=3)
  w = str(tmp_path)
  train.train_and_evaluate(cfg, w, progress=False)
  two = load_trained(w, "latest")
  _damage(os.path.join(w, "checkpoints", "4"))
  capsys.readouterr()
  t = load_trained(w, "latest")
  assert t.step == 2 and "skipped checkpoint checkpoints/4" in capsys.readouterr().err
  assert _equal(t.meta_params, two.meta_params) or t.step == 2
  r = train.train_and_evaluate(cfg, w, resume=True, progress=False)   # resumes from 2, replays 3..4
  assert "skipped checkpoint 4" in capsys.readouterr().err
  assert r["checkpoint_step"] == 4 and load_trained(w, "latest").step == 4
  for s in ("2", "4"):
    _damage(os.path.join(w, "checkpoints", s))
  with pytest.raises(CheckpointError, match="restores"):
    load_trained(w, "latest")


def test_result_changing_settings_are_refused():
  cfg = get_preset("tiny")
  assert config_differences(cfg, cfg.replace(steps=9, log_every=1, checkpoint_every=3)) == {}
  assert set(config_differences(cfg, cfg.replace(conv_impl="xla" if cfg.conv_impl != "xla" else "gemm"))) \
      == {"conv_impl"}
  cos = cfg.replace(lr_schedule="cosine")
  assert set(config_differences(cos, cos.replace(steps=9))) == {"steps"}
  assert set(config_differences(cfg, cfg.replace(val_every=3, remat=True))) == {"val_every", "remat"}


def test_resume_with_another_cosine_length_is_refused_before_writing(tmp_path):
  cfg = get_preset("tiny").replace(steps=2, lr_schedule="cosine", val_every=0)
  checkpoints.check_or_write_config(str(tmp_path), cfg)   # the run's config.json, as training writes it
  before = open(tmp_path / "config.json").read()
  with pytest.raises(IncompatibleRunError, match="steps: 2 in the workdir, 5 now"):
    train.train_and_evaluate(cfg.replace(steps=5), str(tmp_path), resume=True, progress=False)
  assert open(tmp_path / "config.json").read() == before and os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("bad", [dict(model="conv5"), dict(dataset="cifar10"), dict(log_every=0),
                                 dict(checkpoint_every=0), dict(keep_checkpoints=0), dict(steps=-3),
                                 dict(image_size=0), dict(meta_lr=float("nan")), dict(inner_lr=float("inf")),
                                 dict(image_size=100000), dict(image_size=2048, tasks=32, queries=15)])
def test_invalid_settings_write_nothing(tmp_path, bad):
  w = tmp_path / "w"
  with pytest.raises(ConfigError, match=next(iter(bad))):
    train.train_and_evaluate(get_preset("tiny").replace(**bad), str(w), progress=False)
  assert not w.exists()


def test_nan_mid_run_stops_at_its_step_and_keeps_the_good_checkpoints(tmp_path, monkeypatch, capsys):
  cfg = get_preset("tiny").replace(steps=8, val_every=2, checkpoint_every=2, log_every=4)

  class Poisoned(EpisodeSampler):   # the training episodes of step 5 hold a NaN pixel
    def __call__(self, i):
      b = super().__call__(i)
      if self.seed == cfg.seed and i == 4:
        b = b._replace(query_x=b.query_x.at[0, 0, 0, 0, 0].set(np.nan))
      return b
  monkeypatch.setattr(train, "EpisodeSampler", Poisoned)
  with pytest.raises(train.NonFiniteLossError, match="at step 5;.* of step 4, is kept"):
    train.train_and_evaluate(cfg, str(tmp_path), progress=False)
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [2, 4]   # nothing of step 5 on
  assert _steps(tmp_path / "metrics.jsonl") == [2, 4]
  monkeypatch.setattr(train, "EpisodeSampler", EpisodeSampler)
  r = train.evaluate_workdir(str(tmp_path), episodes=4, progress=False)   # the kept best checkpoint works
  assert np.isfinite(r["test_accuracy"]) and r["checkpoint_step"] in (2, 4)


def test_train_step_records_the_first_non_finite_step():
  from maml_jax.models import build_model
  from maml_jax.train_step import failed_step, init_state, make_mesh, make_train_step, shard_batch
  cfg = get_preset("tiny")
  model, mesh = build_model(cfg.model, cfg.ways), make_mesh(cfg.tasks)
  state = init_state(model, cfg, jax.random.key(0), (12, 12, 1))
  from maml_jax.data_sources import synthetic_classes
  batch = EpisodeSampler(synthetic_classes(9, 20, 12, 1, 0), tasks=cfg.tasks, ways=cfg.ways, shots=cfg.shots,
                         queries=cfg.queries, seed=0)(0)
  step = make_train_step(model, cfg, mesh)
  good, m = step(jax.tree.map(lambda x: x.copy(), state), shard_batch(batch, mesh))
  assert failed_step(good) is None and bool(m["finite"])
  bad, m = step(good, shard_batch(batch._replace(support_x=batch.support_x * np.nan), mesh))
  assert failed_step(bad) == 2 and not bool(m["finite"])
  again, m = step(bad, shard_batch(batch, mesh))   # the failing step is not forgotten
  assert failed_step(again) == 2


def test_truncated_omniglot_cache_is_rebuilt(tmp_path, capsys):
  from maml_jax.data import omniglot
  path = tmp_path / "omniglot-12-x.npz"
  np.savez(path, images=np.zeros((4, 12, 12, 1), np.uint8), counts=np.array([2, 2]), names=np.array(["a", "b"]))
  assert omniglot._read_cache(str(path), 12).num_classes == 2
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])
  assert omniglot._read_cache(str(path), 12) is None and not path.exists()
  assert "damaged" in capsys.readouterr().err


def test_atomic_dir_follows_the_umask_and_removes_stale_temporaries(tmp_path):
  from maml_jax import io as files
  stale = tmp_path / ".out.999999999.abc.tmp"   # a process id that cannot be alive
  stale.mkdir()
  old = os.umask(0o022)
  try:
    with files.atomic_dir(str(tmp_path / "out")) as d:
      files.write_json(os.path.join(d, "a.json"), {"x": 1})
  finally:
    os.umask(old)
  assert not stale.exists()
  assert oct(os.stat(tmp_path / "out").st_mode & 0o777) == oct(0o755)
  assert oct(os.stat(tmp_path / "out" / "a.json").st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("option", ["outer_mask", "inner_mask"])
def test_a_mask_that_matches_no_parameter_is_refused_before_anything_is_written(tmp_path, option):
  w = tmp_path / "w"
  with pytest.raises(ConfigError, match=f"--{option.replace('_', '-')} 'zzzz' matches no parameter of the tiny"):
    train.train_and_evaluate(get_preset("tiny").replace(**{option: "zzzz"}), str(w), progress=False)
  assert not w.exists()


def test_a_folder_dataset_with_fewer_classes_than_ways_leaves_nothing(tmp_path):
  from PIL import Image
  for c in "ab":
    (tmp_path / "imgs" / c).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
  w = tmp_path / "w"
  cfg = get_preset("tiny").replace(dataset="folder", image_folder=str(tmp_path / "imgs"))
  with pytest.raises(ConfigError, match="3-way episodes need 3 classes"):
    train.train_and_evaluate(cfg, str(w), progress=False)
  assert not w.exists()   # no cache, no splits.json, no best/


def test_nan_at_the_first_step_leaves_nothing(tmp_path, monkeypatch):
  cfg = get_preset("tiny").replace(steps=4, val_every=2, checkpoint_every=2, log_every=1)

  class Poisoned(EpisodeSampler):
    def __call__(self, i):
      b = super().__call__(i)
      return b._replace(query_x=b.query_x * np.nan) if self.seed == cfg.seed and i == 0 else b
  monkeypatch.setattr(train, "EpisodeSampler", Poisoned)
  w = tmp_path / "w"
  with pytest.raises(train.NonFiniteLossError, match="at step 1;.* nothing was kept"):
    train.train_and_evaluate(cfg, str(w), progress=False)
  assert not w.exists()


def test_diverged_and_at_chance_runs_are_named():
  lines = [{"step": 1, "loss": 1.6}, {"step": 2, "loss": 1.2}, {"step": 3, "loss": 367.0}]
  w = train.outcome_warnings(lines, 0.2133, 0.02, 5)
  assert len(w) == 2 and w[-1].startswith("training diverged: the meta-train loss ended at 367, 229x its first")
  # Already diverged at the first log (--inner-lr 100 logs 1263 at step 10): against ln(5).
  late = [{"step": 10, "loss": 1263.0}, {"step": 60, "loss": 131.6}]
  assert train.outcome_warnings(late, 0.5, 0.02, 5)[-1].startswith(
      "training diverged: the meta-train loss ended at 131.6, 82x that of a uniform guess (ln 5)")
  assert "not above chance (20.0% for 5 ways)" in w[0]
  assert train.outcome_warnings(lines[:2], 0.9, 0.02, 5) == []
  assert train.outcome_warnings(lines[:2], 0.22, 0.03, 5) != []   # the interval reaches chance
