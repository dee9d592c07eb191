"""The training loop end to end on the tiny preset: checkpoints, resume, errors."""
import json
import os

import jax
import numpy as np
import pytest

from maml_jax.checkpoints import (Checkpoints, IncompatibleRunError, abstract_state, load_trained)
from maml_jax.config import get_preset
from maml_jax.models import build_model
from maml_jax.train import evaluate_workdir, train_and_evaluate
from maml_jax.train_step import init_state


def _leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_checkpoint_round_trip(tmp_path):
  cfg = get_preset("tiny")
  model = build_model(cfg.model, cfg.ways)
  state = init_state(model, cfg, jax.random.key(3), (12, 12, 1))
  ck = Checkpoints(str(tmp_path))
  ck.save(state)
  restored = ck.restore(abstract_state(model, cfg, (12, 12, 1)))
  ck.close()
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert _leaves_equal(restored, state)


def test_end_to_end_tiny_run_writes_results(tmp_path):
  cfg = get_preset("tiny")
  r = train_and_evaluate(cfg, str(tmp_path), progress=False)
  assert r["synthetic_data"] is True
  assert 0.0 <= r["test_accuracy"] <= 1.0 and r["test_episodes"] == cfg.test_episodes
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [2, 4]
  assert all(np.isfinite(l["loss"]) and "val_accuracy" in l for l in lines)
  assert json.load(open(tmp_path / "results.json"))["test_accuracy"] == r["test_accuracy"]
  again = evaluate_workdir(str(tmp_path), progress=False)   # same episodes, same checkpoint
  assert again["test_accuracy"] == pytest.approx(r["test_accuracy"])


def test_resume_ends_with_the_same_parameters(tmp_path):
  cfg = get_preset("tiny").replace(steps=6, val_every=0, checkpoint_every=2)
  straight = tmp_path / "straight"
  train_and_evaluate(cfg, str(straight), progress=False)
  split = tmp_path / "split"
  train_and_evaluate(cfg.replace(steps=2), str(split), progress=False)     # stopped after 2 steps
  with pytest.raises(IncompatibleRunError, match="--resume"):
    train_and_evaluate(cfg, str(split), progress=False)
  train_and_evaluate(cfg, str(split), resume=True, progress=False)
  a, b = load_trained(str(straight), "latest"), load_trained(str(split), "latest")
  assert a.step == b.step == 6
  assert _leaves_equal(a.meta_params, b.meta_params)


def test_incompatible_workdir_is_refused(tmp_path):
  cfg = get_preset("tiny").replace(steps=2)
  train_and_evaluate(cfg, str(tmp_path), progress=False)
  with pytest.raises(IncompatibleRunError, match="inner_lr"):
    train_and_evaluate(cfg.replace(inner_lr=0.123), str(tmp_path), resume=True, progress=False)


def test_nan_loss_stops_the_run(tmp_path):
  from maml_jax.train import NonFiniteLossError
  cfg = get_preset("tiny").replace(inner_lr=1e30, meta_lr=1e30, clip_norm=0.0, steps=4, log_every=1)
  with pytest.raises(NonFiniteLossError, match="step"):
    train_and_evaluate(cfg, str(tmp_path), progress=False)


def test_cli_meta_train_and_evaluate(tmp_path, capsys):
  from maml_jax.cli import main
  assert main(["meta-train", "--preset", "tiny", "--workdir", str(tmp_path), "--no-progress", "--steps", "2"]) == 0
  out = capsys.readouterr().out
  assert "SYNTHETIC" in out and "accuracy" in out
  assert main(["evaluate", "--workdir", str(tmp_path), "--no-progress", "--episodes", "4"]) == 0
  out = capsys.readouterr().out
  assert "3-way 1-shot" in out and "4 episodes" in out
  # Another shot count, and the initialisation on the same episodes.
  assert main(["evaluate", "--workdir", str(tmp_path), "--no-progress", "--episodes", "4", "--shots", "2",
               "--checkpoint", "init"]) == 0
  out = capsys.readouterr().out
  assert "3-way 2-shot" in out and "4 episodes" in out and "step 0" in out
  assert main(["evaluate", "--workdir", str(tmp_path), "--no-progress", "--shots", "0"]) == 2
  assert "error: invalid configuration: shots=0 must be >= 1" in capsys.readouterr().err
