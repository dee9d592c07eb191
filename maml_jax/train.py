"""Meta-training and evaluation loops: `train_and_evaluate(cfg, workdir)`.

One jitted, donated meta-train step per meta-batch; episodes drawn from
(seed, step) so that a resumed run sees the same episodes as an uninterrupted
one; metrics leave the device only every `log_every` steps; a NaN loss stops
the run; periodic validation keeps the best checkpoint (the `keep_best` best),
which the final meta-test evaluation uses (or their ensemble, `test_ensemble`).
"""
from __future__ import annotations

import json
import os
import sys
import time

import jax

from maml_jax.checkpoints import (CheckpointError, Checkpoints, IncompatibleRunError, best_json, check_or_write_config,
                                  config_differences, read_config, top_records, truncate_metrics, write_json)
from maml_jax.config import Config, ConfigError
from maml_jax.data_sources import load_splits
from maml_jax.data.progress import progress as progress_bar
from maml_jax.distributed import is_primary
from maml_jax.episodes import EpisodeSampler
from maml_jax.errors import UserError
from maml_jax.models import model_for
from maml_jax.evaluate import (TEST_SEED, VAL_SEED, ensemble_label, episode_accuracies, eval_sampler, evaluate_params,
                               make_ensemble_step, stack_members, summary)
from maml_jax.train_step import (failed_step, init_state, make_eval_step, make_mesh, make_train_step, replicate,
                                 shard_batch)

class NonFiniteLossError(UserError):
  """The loss or meta-gradient of a step was not finite; the run stopped, its
  checkpoints (all from earlier steps) are kept."""


def _has_checkpoints(workdir: str) -> bool:
  d = os.path.join(workdir, "checkpoints")
  return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def _stop_if_failed(state, ckpt: Checkpoints) -> None:
  bad = failed_step(state)
  if bad is not None:
    done = ckpt.steps()
    kept = f"the last checkpoint, of step {done[0]}, is kept" if done else "no checkpoint was saved yet"
    raise NonFiniteLossError(f"the loss or meta-gradient became non-finite (NaN or inf) at step {bad}; the run "
                             f"stopped there, {kept}. Lower --meta-lr or --inner-lr, or set --clip-norm")


def train_and_evaluate(cfg: Config, workdir: str, resume: bool = False, progress: bool = True, *,
                       splits: dict | None = None, model=None) -> dict:
  """Meta-trains `cfg` in `workdir`, then evaluates the best checkpoint on the
  meta-test classes.  Returns the results written to results.json.

  `splits` ({"train", "val", "test"}: ClassImages) and `model` replace the
  configuration's dataset and network; the feature-head meta-training passes
  feature vectors and its head this way.

  Nothing is written to `workdir` before the configuration, the workdir's
  earlier run (if any) and the data have been checked.  A resumed run restarts
  from the newest checkpoint that restores and verifies, drops the metrics
  logged after it, and replays the steps after it bit-identically.
  """
  cfg.validate()
  if os.path.exists(os.path.join(workdir, "config.json")):
    diff = config_differences(read_config(workdir), cfg)
    if diff:
      check_or_write_config(workdir, cfg)   # raises, naming the differences
  if _has_checkpoints(workdir) and not resume:
    raise IncompatibleRunError(f"{workdir} already holds checkpoints; pass --resume to continue that run, "
                               f"or use another --workdir")
  model = model_for(cfg) if model is None else model   # an unknown --model fails here
  if splits is None:
    splits = load_splits(cfg, workdir)
    for name, d in splits.items():
      if d.image_shape != (cfg.image_size, cfg.image_size, cfg.channels):
        raise ConfigError(f"{name} images are {d.image_shape}, the config asks for "
                          f"{(cfg.image_size, cfg.image_size, cfg.channels)}")
  synthetic = any(d.synthetic for d in splits.values())
  mesh = make_mesh(cfg.tasks)
  image_shape = splits["train"].image_shape
  state = replicate(init_state(model, cfg, jax.random.key(cfg.seed), image_shape), mesh)
  os.makedirs(workdir, exist_ok=True)
  check_or_write_config(workdir, cfg)
  ckpt = Checkpoints(workdir, cfg.keep_checkpoints)
  best_path, metrics_path = os.path.join(workdir, "best.json"), os.path.join(workdir, "metrics.jsonl")
  if ckpt.steps():
    state, _ = ckpt.restore_newest(state)
    state = replicate(state, mesh)
  start = int(state.step)
  # The steps after `start` are replayed: their log lines and best checkpoints go.
  # top: the `keep_best` best validations so far, best first (top[0] is the best).
  top = top_records(truncate_metrics(metrics_path, start), cfg.keep_best)
  for s in ckpt.steps(best=True):
    if s > start or s not in [r["step"] for r in top]:
      ckpt.delete(s, best=True)
  for r in list(top):
    try:
      ckpt.restore_step(state, r["step"], best=True)
    except CheckpointError as e:   # lost or damaged on disk (a kill never does this)
      print(f"warning: the best checkpoint of step {r['step']} is unusable ({e}); its place is filled "
            f"again among the validations after step {start}", file=sys.stderr)
      top.remove(r)
  if top:
    write_json(best_path, best_json(top, cfg.keep_best))
  elif os.path.exists(best_path) and is_primary():
    os.remove(best_path)

  # Across hosts every process draws the same episodes on its host (a batch
  # drawn on one local device cannot be split over other hosts' devices).
  on_device = cfg.on_device_data and jax.process_count() == 1
  train = EpisodeSampler(splits["train"], tasks=cfg.tasks, ways=cfg.ways, shots=cfg.shots,
                         queries=cfg.queries, seed=cfg.seed, on_device=on_device)
  val, test = eval_sampler(splits["val"], cfg, VAL_SEED), eval_sampler(splits["test"], cfg, TEST_SEED)
  train_step = make_train_step(model, cfg, mesh)
  eval_step = make_eval_step(model, cfg, mesh)

  train_seconds, t_mark = 0.0, time.perf_counter()
  bar = progress_bar(total=cfg.steps, initial=start, desc="meta-train" + (" [SYNTHETIC data]" if synthetic else ""),
                     disable=not progress)
  postfix: dict = {}
  with open(metrics_path if is_primary() else os.devnull, "a") as log:
    for i in range(start, cfg.steps):
      state, metrics = train_step(state, shard_batch(train(i), mesh))
      step = i + 1
      bar.update(1)
      do_val = cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps)
      if step % cfg.log_every == 0 or step == cfg.steps or do_val:
        _stop_if_failed(state, ckpt)
        m = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
        train_seconds += time.perf_counter() - t_mark
        t_mark = time.perf_counter()
        rec = {"step": step, "train_seconds": round(train_seconds, 2), **{k: round(v, 5) for k, v in m.items()}}
        postfix.update(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.3f}")
        if do_val:
          val_sum = summary(episode_accuracies(eval_step, state.meta_params, val, cfg.val_episodes, mesh,
                                               "validating", progress))
          rec["val_accuracy"], rec["val_ci95"] = val_sum["accuracy"], val_sum["ci95"]
          postfix["val"] = f"{rec['val_accuracy']:.3f}"
          if cfg.monitor_test:
            test_sum = summary(episode_accuracies(eval_step, state.meta_params, test, cfg.test_episodes, mesh,
                                                  "testing", progress))
            rec["test_accuracy"], rec["test_ci95"] = test_sum["accuracy"], test_sum["ci95"]
            postfix["test"] = f"{rec['test_accuracy']:.3f}"
          new_top = top_records(top + [rec], cfg.keep_best)
          if step in [r["step"] for r in new_top]:   # ties: the earlier step stays
            top = new_top
            ckpt.save(state, best=True)
            write_json(best_path, best_json(top, cfg.keep_best))
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.set_postfix(postfix, refresh=False)
        t_mark = time.perf_counter()   # evaluation time does not count as training time
      if step % cfg.checkpoint_every == 0 or step == cfg.steps:
        _stop_if_failed(state, ckpt)
        ckpt.save(state)
        ckpt.prune_best([r["step"] for r in top])   # the others are no longer in any checkpoint's top-K
        t_mark = time.perf_counter()
  bar.close()
  _stop_if_failed(state, ckpt)
  train_seconds += time.perf_counter() - t_mark

  final = state
  if top:
    final = replicate(ckpt.restore(state, best=True, step=top[0]["step"]), mesh)
  members = [r["step"] for r in top[:cfg.test_ensemble]]
  if cfg.test_ensemble > 1 and len(members) < cfg.test_ensemble:
    print(f"warning: --test-ensemble {cfg.test_ensemble}: only {len(members)} usable best checkpoint(s) "
          f"(steps {members}); the final meta-test scores those", file=sys.stderr)
  ensemble = None
  if cfg.test_ensemble > 1 and len(members) > 1:   # MAML++'s top-K ensemble at test
    ensemble = replicate(stack_members([ckpt.restore(state, best=True, step=s).meta_params for s in members]), mesh)
  ckpt.close()
  t0 = time.perf_counter()
  if ensemble is None:
    accs = episode_accuracies(eval_step, final.meta_params, test, cfg.test_episodes, mesh, "meta-test", progress)
  else:
    accs = episode_accuracies(make_ensemble_step(model, cfg, mesh), ensemble, test, cfg.test_episodes, mesh,
                              "meta-test", progress)
  final_sum = summary(accs)
  results = {"test_accuracy": final_sum["accuracy"], "test_ci95": final_sum["ci95"],
             "test_episodes": final_sum["episodes"], "checkpoint_step": int(final.step),
             "best_val_accuracy": top[0]["val_accuracy"] if top else -1.0, "steps": cfg.steps,
             "synthetic_data": synthetic,
             "eval_inner_steps": cfg.eval_inner_steps, "ways": cfg.ways, "shots": cfg.shots,
             "train_seconds_this_run": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - t0, 1)}
  if ensemble is not None:
    results.update(ensemble=ensemble_label(members), ensemble_steps=members)
  write_json(os.path.join(workdir, "results.json"), results)
  return results


def evaluate_workdir(workdir: str, episodes: int | None = None, inner_steps: int | None = None,
                     which: str = "best", progress: bool = True, shots: int | None = None,
                     ensemble: int = 1) -> dict:
  """Evaluates a saved run on its meta-test classes (same episodes as training's final evaluation).

  `which`: "best" or "latest" checkpoint, or "init" for the run's initialisation
  before any meta-training (the baseline that meta-training must beat).
  `shots`: support images per class, if not the run's (episodes then differ
  from training's final evaluation, but are the same for every `which`).
  `ensemble` K > 1: the ensemble of the run's K best checkpoints by validation
  (MAML++), on the same episodes; the result then says so ("ensemble").
  """
  from maml_jax.checkpoints import Trained, load_ensemble, load_trained, read_config
  if ensemble < 1:
    raise UserError(f"--ensemble {ensemble} must be >= 1")
  if ensemble > 1 and which != "best":
    raise UserError(f"--ensemble {ensemble} ensembles the best checkpoints; it does not apply to --checkpoint {which}")
  members = load_ensemble(workdir, ensemble) if ensemble > 1 else None
  if members:
    trained = members[0]
  elif which == "init":   # the same network without meta-training: the run's initialisation (its seed's)
    cfg = read_config(workdir)
    model = model_for(cfg)
    state = init_state(model, cfg, jax.random.key(cfg.seed), (cfg.image_size, cfg.image_size, cfg.channels))
    trained = Trained(cfg, state.meta_params, model, 0)
  else:
    trained = load_trained(workdir, which)
  cfg = trained.config if shots is None else trained.config.replace(shots=shots).validate()
  splits = load_splits(cfg, workdir)
  steps = cfg.eval_inner_steps if inner_steps is None else inner_steps
  params = [m.meta_params for m in members] if members else trained.meta_params
  accs = evaluate_params(trained.model, cfg, params, splits["test"], episodes=episodes or cfg.test_episodes,
                         seed=TEST_SEED, steps=steps, progress=progress)
  s = summary(accs)
  r = {"test_accuracy": s["accuracy"], "test_ci95": s["ci95"], "test_episodes": s["episodes"],
       "per_episode": accs.tolist(), "checkpoint_step": trained.step,
       "eval_inner_steps": steps, "ways": cfg.ways, "shots": cfg.shots,
       "synthetic_data": any(d.synthetic for d in splits.values())}
  if members:
    r.update(ensemble=ensemble_label([m.step for m in members]), ensemble_steps=[m.step for m in members])
  return r
