"""MAML++'s top-K checkpoint ensemble at test: the K best checkpoints by
validation are kept, each is adapted on an episode's support set, and their
query class probabilities are averaged.  SYNTHETIC data (the `tiny` preset)."""
import json
import os

import jax
import numpy as np
import pytest

from maml_jax import cli, maml, train
from maml_jax.checkpoints import config_differences, load_ensemble, load_trained
from maml_jax.config import ConfigError, get_preset
from maml_jax.data_sources import load_splits
from maml_jax.evaluate import TEST_SEED, eval_sampler, evaluate_params
from conftest import train_killed_at_best_json

# Validation at every step, a latest checkpoint every 2: a step enters the
# top 3 between checkpoints and is pushed out later, so pruning happens.
CFG = get_preset("tiny").replace(steps=6, val_every=1, checkpoint_every=2, keep_best=3, test_ensemble=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  w = str(tmp_path_factory.mktemp("ensemble"))
  train.train_and_evaluate(CFG, w, progress=False)
  return w


def _vals(w):
  """[(step, val_accuracy)] of metrics.jsonl, in step order."""
  return [(r["step"], r["val_accuracy"]) for r in map(json.loads, open(os.path.join(w, "metrics.jsonl")))]


def _top3(vals):
  """The steps of the 3 best validations, best first; ties: the earlier step."""
  return [s for s, _ in sorted(vals, key=lambda v: (-v[1], v[0]))[:3]]


def _best_dirs(w):
  return sorted(int(s) for s in os.listdir(os.path.join(w, "best")))


def _equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_run_keeps_exactly_its_k_best_validations(run):
  vals = _vals(run)
  assert [s for s, _ in vals] == list(range(1, 7))
  top = _top3(vals)
  assert _best_dirs(run) == sorted(top)
  best = json.load(open(os.path.join(run, "best.json")))
  assert best["step"] == top[0] and [r["step"] for r in best["top"]] == top
  # Some step entered the top 3 at its validation and was pruned later.
  entered = {s for i, (s, _) in enumerate(vals) if s in _top3(vals[:i + 1])}
  assert entered - set(top)
  # `evaluate`, `adapt` and `predict` load the best, not the newest of the kept ones.
  assert load_trained(run, "best").step == top[0]
  r = json.load(open(os.path.join(run, "results.json")))
  assert r["checkpoint_step"] == top[0] and r["ensemble_steps"] == top
  assert r["ensemble"] == f"ensemble of the top-3 checkpoints by validation, steps {', '.join(map(str, top))}"


def test_ensemble_of_one_is_the_single_best_evaluation(run):
  single = train.evaluate_workdir(run, progress=False)
  one = train.evaluate_workdir(run, ensemble=1, progress=False)
  assert one == single and "ensemble" not in one
  # The ensemble scoring itself, with one member, gives the single model's accuracies.
  t = load_trained(run, "best")
  data = load_splits(t.config, run)["test"]
  kw = dict(episodes=t.config.test_episodes, seed=TEST_SEED, progress=False)
  np.testing.assert_array_equal(evaluate_params(t.model, t.config, [t.meta_params], data, **kw),
                                np.asarray(single["per_episode"]))


def test_ensemble_accuracy_is_that_of_hand_averaged_probabilities(run):
  r = train.evaluate_workdir(run, ensemble=3, progress=False)
  members = load_ensemble(run, 3)
  cfg, model = members[0].config, members[0].model
  assert len({m.step for m in members}) == 3 and not _equal(members[0].meta_params, members[1].meta_params)
  sampler = eval_sampler(load_splits(cfg, run)["test"], cfg, TEST_SEED)

  @jax.jit
  def probs(meta_params, sx, sy, qx):   # one member, adapted on its own
    params, _ = maml.adapt(meta_params, sx, sy, model=model, cfg=cfg, steps=cfg.eval_inner_steps)
    return jax.nn.softmax(maml.query_logits(model, params, sx, qx, cfg.query_bn))

  hand, moved = [], False
  for i in range(-(-cfg.test_episodes // cfg.tasks)):
    b = sampler(i)
    for t in range(cfg.tasks):
      each = np.stack([np.asarray(probs(m.meta_params, b.support_x[t], b.support_y[t], b.query_x[t]))
                       for m in members])
      mean = each.sum(0) / len(members)
      moved |= bool(np.abs(mean - each[0]).max() > 1e-3)
      hand.append(np.mean(mean.argmax(-1) == np.asarray(b.query_y[t])))
  np.testing.assert_allclose(r["per_episode"], hand[:cfg.test_episodes], rtol=0, atol=1e-6)
  assert moved   # averaging changed the probabilities: the members are not one model
  assert r["ensemble_steps"] == [m.step for m in members] and r["checkpoint_step"] == members[0].step
  # Training's final meta-test scored the same ensemble on the same episodes.
  assert json.load(open(os.path.join(run, "results.json")))["test_accuracy"] == r["test_accuracy"]


def test_asking_for_more_than_the_run_kept_is_an_error(run, capsys):
  assert cli.main(["evaluate", "--workdir", run, "--ensemble", "4", "--no-progress"]) == 2
  err = capsys.readouterr().err.splitlines()[-1]
  assert err == (f"error: --ensemble 4: {run} keeps its 3 best checkpoint(s) by validation (keep_best=3); "
                 f"ask for at most 3, or meta-train with --keep-best 4")
  assert cli.main(["evaluate", "--workdir", run, "--ensemble", "2", "--checkpoint", "latest"]) == 2
  assert "does not apply to --checkpoint latest" in capsys.readouterr().err
  with pytest.raises(ConfigError, match="test_ensemble=3 needs keep_best >= 3"):
    CFG.replace(keep_best=2).validate()
  with pytest.raises(ConfigError, match="test_ensemble=3 needs as many validations"):
    CFG.replace(val_every=4).validate()
  # Which checkpoints a run keeps cannot change on resume; the final ensemble's size can.
  assert config_differences(CFG, CFG.replace(keep_best=4, test_ensemble=2)) == {"keep_best": (3, 4)}


def test_resume_after_a_kill_keeps_the_same_top_k(run, tmp_path, monkeypatch):
  w = str(tmp_path / "killed")
  seen = {}

  def look():
    seen["best"], seen["latest"] = _best_dirs(w), os.listdir(os.path.join(w, "checkpoints"))
  # Killed right after step 5 or later entered the top-K: its best checkpoint is
  # saved, best.json and the latest checkpoint (step 4) are not.
  train_killed_at_best_json(monkeypatch, CFG, w, lambda best: max(r["step"] for r in best["top"]) >= 5, look)
  assert max(seen["best"]) > max(int(s) for s in seen["latest"])   # a best checkpoint ahead of the latest
  r = train.train_and_evaluate(CFG, w, resume=True, progress=False)
  assert [s for s, _ in _vals(w)] == list(range(1, 7))   # no step logged twice
  assert _best_dirs(w) == _best_dirs(run)
  assert json.load(open(os.path.join(w, "best.json"))) == json.load(open(os.path.join(run, "best.json")))
  ref = json.load(open(os.path.join(run, "results.json")))
  assert r["ensemble_steps"] == ref["ensemble_steps"] and r["test_accuracy"] == ref["test_accuracy"]
  for a, b in zip(load_ensemble(run, 3), load_ensemble(w, 3)):
    assert a.step == b.step and _equal(a.meta_params, b.meta_params)
