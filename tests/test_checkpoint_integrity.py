"""Checkpoint checksums, and resumes that never lose a readable best checkpoint."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from maml_jax import checkpoints, train
from maml_jax.checkpoints import CheckpointError, Checkpoints, check_checksums, load_trained
from maml_jax.config import get_preset
from maml_jax.models import model_for
from maml_jax.tools.damage_campaign import KINDS, damage
from maml_jax.train_step import init_state


def _equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(workdir, state): a tiny state saved as the latest checkpoint of step 0."""
  w = str(tmp_path_factory.mktemp("saved"))
  cfg = get_preset("tiny")
  checkpoints.check_or_write_config(w, cfg)
  state = init_state(model_for(cfg), cfg, jax.random.key(0), (cfg.image_size, cfg.image_size, cfg.channels))
  ck = Checkpoints(w)
  ck.save(state)
  ck.close()
  return w, state


def test_every_checkpoint_carries_checksums_of_all_its_files(saved):
  w, _ = saved
  folder = os.path.join(w, "checkpoints", "0")
  listed = json.load(open(os.path.join(folder, checkpoints.CHECKSUMS)))["sha256"]
  on_disk = {os.path.relpath(os.path.join(dp, f), folder) for dp, _, fs in os.walk(folder) for f in fs}
  assert set(listed) == on_disk - {checkpoints.CHECKSUMS} and len(listed) > 3
  assert check_checksums(folder) is True


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_damage_fails_the_checksums_before_orbax_reads(saved, tmp_path, kind, capsys):
  w, state = saved
  copy = str(tmp_path / "w")
  shutil.copytree(w, copy)
  damage(os.path.join(copy, "checkpoints", "0"), kind)
  with pytest.raises(CheckpointError, match="fails its checksums"):
    check_checksums(os.path.join(copy, "checkpoints", "0"))
  ck = Checkpoints(copy)
  with pytest.raises(CheckpointError, match="fails its checksums"):
    ck.restore_step(state, 0)
  ck.close()
  assert "Traceback" not in capsys.readouterr().err   # orbax never saw the damaged files


def test_25_single_bit_flips_are_all_detected(saved, tmp_path):
  w, _ = saved
  folder = os.path.join(w, "checkpoints", "0")
  files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs if f != checkpoints.CHECKSUMS)
  rng = np.random.default_rng(0)
  detected = 0
  for _ in range(25):
    p = files[rng.integers(len(files))]
    original = open(p, "rb").read()
    data = bytearray(original)
    data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    open(p, "wb").write(bytes(data))
    try:
      check_checksums(folder)
    except CheckpointError:
      detected += 1
    open(p, "wb").write(original)
  assert detected == 25
  assert check_checksums(folder)


def test_a_checkpoint_without_checksums_restores_with_a_warning(saved, tmp_path, capsys):
  w, state = saved
  copy = str(tmp_path / "w")
  shutil.copytree(w, copy)
  os.remove(os.path.join(copy, "checkpoints", "0", checkpoints.CHECKSUMS))
  ck = Checkpoints(copy)
  assert _equal(ck.restore_step(state, 0).meta_params, state.meta_params)
  ck.close()
  assert "no checksums.json" in capsys.readouterr().err


def test_a_best_save_after_a_failed_restore_of_a_missing_step_works(saved, tmp_path):
  # orbax's manager, asked to restore a step it does not hold, refused its next
  # save ("Must provide args of type Composite"): a resumed run then lost best/.
  w, state = saved
  copy = str(tmp_path / "w")
  shutil.copytree(w, copy)
  ck = Checkpoints(copy)
  with pytest.raises(CheckpointError, match="does not exist"):
    ck.restore_step(state, 7, best=True)
  ck.save(state, best=True)
  assert ck.steps(best=True) == [0]
  ck.close()


FINISHED = get_preset("tiny").replace(steps=4, val_every=2, checkpoint_every=2, keep_checkpoints=3)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """(workdir, results) of a finished tiny run: checkpoints/2 and /4, best/4."""
  w = str(tmp_path_factory.mktemp("finished") / "run")
  return w, train.train_and_evaluate(FINISHED, w, progress=False)


def test_damaged_newest_and_best_checkpoints_resume_to_the_uninterrupted_run(finished, tmp_path, capsys):
  # The newest latest checkpoint is also the best: both damaged, the run
  # resumes from the older latest, refills the pruned best of that step from
  # it, replays, and ends as if nothing had happened, twice.
  cfg = FINISHED
  (ref, r_ref), w = finished, str(tmp_path / "w")
  assert json.load(open(os.path.join(ref, "best.json")))["step"] == 4 and os.listdir(os.path.join(ref, "best")) == ["4"]
  shutil.copytree(ref, w)
  damage(os.path.join(w, "checkpoints", "4"), "truncate")
  damage(os.path.join(w, "best", "4"), "truncate")
  stale = os.path.join(w, ".best.json.abc123.tmp")   # a kill during a best.json write leaves one
  open(stale, "w").close()
  capsys.readouterr()
  for _ in range(2):
    r = train.train_and_evaluate(cfg, w, resume=True, progress=False)
    assert r["test_accuracy"] == r_ref["test_accuracy"] and r["checkpoint_step"] == 4
  err = capsys.readouterr().err
  assert "skipped checkpoint 4" in err and "Traceback" not in err and not os.path.exists(stale)
  assert json.load(open(os.path.join(w, "best.json"))) == json.load(open(os.path.join(ref, "best.json")))
  for which in ("best", "latest"):
    a, b = load_trained(ref, which), load_trained(w, which)
    assert a.step == b.step == 4 and _equal(a.meta_params, b.meta_params)
    assert check_checksums(os.path.join(w, "best" if which == "best" else "checkpoints", "4"))


def test_resume_keeps_a_readable_best_ahead_of_the_resume_point(finished, tmp_path):
  # Only the newest latest checkpoint is damaged: best/4 stays on disk (it is
  # the only copy of that step's state until the replay saves it again).
  cfg, w = FINISHED, str(tmp_path / "w")
  shutil.copytree(finished[0], w)
  best4 = load_trained(w, "best")
  damage(os.path.join(w, "checkpoints", "4"), "data")
  ck = Checkpoints(w)
  template = checkpoints.abstract_state(model_for(cfg), cfg, (cfg.image_size,) * 2 + (cfg.channels,))
  state, skipped = ck.restore_newest(template)
  top = ck.usable_top(state, checkpoints.read_metrics(os.path.join(w, "metrics.jsonl"), 2), cfg.keep_best)
  ck.prune_best([r["step"] for r in top], upto=2)
  assert int(state.step) == 2 and [r["step"] for r in top] == [2] and ck.steps(best=True) == [4, 2]
  ck.close()
  assert _equal(load_trained(w, "best").meta_params, best4.meta_params)
