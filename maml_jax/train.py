"""Meta-training and evaluation loops: `train_and_evaluate(cfg, workdir)`.

One jitted, donated meta-train step per meta-batch; episodes drawn from
(seed, step) so that a resumed run sees the same episodes as an uninterrupted
one; metrics leave the device only every `log_every` steps; a NaN loss stops
the run; periodic validation keeps the best checkpoint (the `keep_best` best),
which the final meta-test evaluation uses (or their ensemble, `test_ensemble`).
A spent `time_budget` or a caught Ctrl-C stops the run at a step boundary with
a checkpoint and no final evaluation (`maml_jax.stopping`); `--resume`
continues it.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import sys
import time

import jax

from maml_jax.checkpoints import (Checkpoints, IncompatibleRunError, best_json, check_or_write_config,
                                  config_differences, read_config, read_metrics, top_records, truncate_metrics,
                                  write_json)
from maml_jax.config import Config, ConfigError
from maml_jax.data_sources import load_splits
from maml_jax.data.progress import progress as progress_bar
from maml_jax.distributed import is_primary
from maml_jax.episodes import EpisodeSampler
from maml_jax.errors import UserError
from maml_jax.models import input_shape, model_for
from maml_jax.stopping import StopRequests
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


# A run whose last logged meta-train loss is this many times the smaller of its
# first logged loss and chance-level cross-entropy (ln ways, a uniform guess)
# diverged: a network that learns nothing stays near ln(ways).
DIVERGED_FACTOR = 4.0


def _stop_if_failed(state, ckpt: Checkpoints, undo=None) -> None:
  """NonFiniteLossError if a step of `state` failed; `undo()` first removes what
  this run wrote when it saved no checkpoint."""
  bad = failed_step(state)
  if bad is not None:
    done = ckpt.steps()
    if not done and not ckpt.steps(best=True) and undo is not None:
      ckpt.close()
      undo()
    kept = f"the last checkpoint, of step {done[0]}, is kept" if done else "nothing was kept"
    raise NonFiniteLossError(f"the loss or meta-gradient became non-finite (NaN or inf) at step {bad}; the run "
                             f"stopped there, {kept}. Lower --meta-lr or --inner-lr, or set --clip-norm")


def outcome_warnings(lines: list[dict], test_accuracy: float, test_ci95: float, ways: int) -> list[str]:
  """What a user must know before trusting a finished run: its training diverged
  (the last logged meta-train loss in metrics.jsonl `lines` is DIVERGED_FACTOR
  times the smaller of the first one and ln(ways)), or its meta-test accuracy
  is not above chance (the 95% interval reaches 1/ways); the divergence last,
  where a user looks.  [] when neither."""
  out = []
  losses = [r["loss"] for r in lines if isinstance(r.get("loss"), (int, float))]
  ref = min(losses[0], math.log(ways)) if losses else 0.0
  chance = 1.0 / ways
  if test_accuracy - test_ci95 <= chance:
    out.append(f"the meta-test accuracy ({100 * test_accuracy:.2f} +- {100 * test_ci95:.2f}%) is not above chance "
               f"({100 * chance:.1f}% for {ways} ways)")
  if losses and losses[-1] > DIVERGED_FACTOR * ref:
    out.append(f"training diverged: the meta-train loss ended at {losses[-1]:.4g}, {losses[-1] / ref:.0f}x "
               f"{'its first logged value' if ref == losses[0] else f'that of a uniform guess (ln {ways})'} "
               f"({ref:.4g}); lower --meta-lr or --inner-lr, or set --clip-norm")
  return out


def _remove_stale_temporaries(workdir: str) -> None:
  """The temporary files of atomic writes that a killed run left in `workdir`
  (one run writes a workdir at a time, so none of them is in use)."""
  for pattern in (".*.json.*.tmp", "metrics.jsonl.tmp*"):
    for p in glob.glob(os.path.join(workdir, pattern)):
      os.remove(p)


def _listing(workdir: str) -> set[str] | None:
  """The entries of `workdir`, or None when it does not exist."""
  return set(os.listdir(workdir)) if os.path.isdir(workdir) else None


def _remove_added(workdir: str, before: set[str] | None) -> None:
  """Removes what was added to `workdir` since its `_listing` was `before`
  (the whole workdir when it did not exist then)."""
  if not is_primary():
    return
  if before is None:
    shutil.rmtree(workdir, ignore_errors=True)
    return
  for name in set(os.listdir(workdir)) - before if os.path.isdir(workdir) else ():
    p = os.path.join(workdir, name)
    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)


@contextlib.contextmanager
def _undone_on_error(workdir: str):
  """On an exception, removes what the block added to `workdir`."""
  before = _listing(workdir)
  try:
    yield
  except BaseException:
    _remove_added(workdir, before)
    raise


def train_and_evaluate(cfg: Config, workdir: str, resume: bool = False, progress: bool = True, *,
                       splits: dict | None = None, model=None, catch_interrupt: bool = False) -> dict:
  """Meta-trains `cfg` in `workdir`, then evaluates the best checkpoint on the
  meta-test classes.  Returns the results written to results.json.

  A run that stops early (its `time_budget` spent, or Ctrl-C with
  `catch_interrupt`) saves a checkpoint of the step it reached, writes no
  results.json (it removes a stale one: results.json is there only when the
  run finished) and returns {"stopped": "time budget" | "interrupted", "step",
  "steps", "synthetic_data", "train_seconds_this_run"}; `resume=True` continues
  it as if it had not stopped.

  `splits` ({"train", "val", "test"}: ClassImages) and `model` replace the
  configuration's dataset and network; the feature-head meta-training passes
  feature vectors and its head this way.

  Nothing is written to `workdir` before the configuration, the workdir's
  earlier run (if any) and the data have been checked.  A resumed run restarts
  from the newest checkpoint that restores and verifies, drops the metrics
  logged after it, and replays the steps after it bit-identically.
  """
  started = time.monotonic()   # the time budget counts set-up and compilation too
  cfg.validate()
  if jax.process_count() > 1 and cfg.time_budget:
    # Each process would stop at the step its own clock says: the others would wait forever.
    raise ConfigError("time_budget applies to single-process runs; a multi-process run stops by its --steps")
  if os.path.exists(os.path.join(workdir, "config.json")):
    diff = config_differences(read_config(workdir), cfg)
    if diff:
      check_or_write_config(workdir, cfg)   # raises, naming the differences
  if _has_checkpoints(workdir) and not resume:
    raise IncompatibleRunError(f"{workdir} already holds checkpoints; pass --resume to continue that run, "
                               f"or use another --workdir")
  model = model_for(cfg) if model is None else model   # an unknown --model fails here
  before = _listing(workdir)
  with _undone_on_error(workdir):   # a data set that fails (too few classes, a bad image) leaves no cache
    if splits is None:
      splits = load_splits(cfg, workdir)
      for name, d in splits.items():
        if d.image_shape != input_shape(cfg):
          raise ConfigError(f"{name} images are {d.image_shape}, the config asks for "
                            f"{input_shape(cfg)}")
    # Across hosts every process draws the same episodes on its host (a batch
    # drawn on one local device cannot be split over other hosts' devices).
    on_device = cfg.on_device_data and jax.process_count() == 1
    try:
      train = EpisodeSampler(splits["train"], tasks=cfg.tasks, ways=cfg.ways, shots=cfg.shots,
                             queries=cfg.queries, seed=cfg.seed, on_device=on_device)
      val, test = eval_sampler(splits["val"], cfg, VAL_SEED), eval_sampler(splits["test"], cfg, TEST_SEED)
    except ValueError as e:   # the sampler: too few classes, or images per class, for these episodes
      raise ConfigError(f"{cfg.dataset}: {e}") from None
  synthetic = any(d.synthetic for d in splits.values())
  mesh = make_mesh(cfg.tasks)
  image_shape = splits["train"].image_shape
  state = replicate(init_state(model, cfg, jax.random.key(cfg.seed), image_shape), mesh)
  new_run = not os.path.exists(os.path.join(workdir, "config.json"))
  os.makedirs(workdir, exist_ok=True)
  _remove_stale_temporaries(workdir)
  check_or_write_config(workdir, cfg)
  ckpt = Checkpoints(workdir, cfg.keep_checkpoints)
  # A new run that stops before its first checkpoint leaves the workdir as it found it.
  undo = (lambda: _remove_added(workdir, before)) if new_run else None
  best_path, metrics_path = os.path.join(workdir, "best.json"), os.path.join(workdir, "metrics.jsonl")
  if ckpt.steps():
    state, _ = ckpt.restore_newest(state)
    state = replicate(state, mesh)
  start = int(state.step)
  # The steps after `start` are replayed: their log lines go, and so do the best
  # checkpoints before `start` that are no longer among the `keep_best` best.  The
  # best checkpoints after `start` stay until the replay saves them again (a
  # damaged newest checkpoint must not cost a readable best).
  # top: the `keep_best` best validations so far, best first (top[0] is the best).
  top = ckpt.usable_top(state, truncate_metrics(metrics_path, start), cfg.keep_best)
  ckpt.prune_best([r["step"] for r in top], upto=start)
  if top:
    write_json(best_path, best_json(top, cfg.keep_best))

  train_step = make_train_step(model, cfg, mesh)
  eval_step = make_eval_step(model, cfg, mesh)

  train_seconds, t_mark = 0.0, time.perf_counter()
  postfix: dict = {}
  stopped = None
  stops = StopRequests(cfg.time_budget, catch_interrupt and jax.process_count() == 1, started)
  # Ctrl-C is caught from here on: once the progress bar shows, it stops at a step boundary.
  with stops, open(metrics_path if is_primary() else os.devnull, "a") as log:
    bar = progress_bar(total=cfg.steps, initial=start, desc="meta-train" + (" [SYNTHETIC data]" if synthetic else ""),
                       disable=not progress)
    for i in range(start, cfg.steps):
      state, metrics = train_step(state, shard_batch(train(i), mesh))
      step = i + 1
      bar.update(1)
      do_val = cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps)
      if step % cfg.log_every == 0 or step == cfg.steps or do_val:
        _stop_if_failed(state, ckpt, undo)
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
      # After this step's validation, so that the resumed run needs none of it again.
      stopped = stops.reason() if step < cfg.steps else None
      if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopped:
        _stop_if_failed(state, ckpt, undo)
        ckpt.save(state)
        ckpt.prune_best([r["step"] for r in top], upto=step)   # the others left every checkpoint's top-K
        t_mark = time.perf_counter()
      if stopped:
        break
  bar.close()
  _stop_if_failed(state, ckpt, undo)
  train_seconds += time.perf_counter() - t_mark
  if stopped:
    ckpt.close()
    results_path = os.path.join(workdir, "results.json")
    if os.path.exists(results_path) and is_primary():   # an earlier, shorter run's
      os.remove(results_path)
    return {"stopped": stopped, "step": int(state.step), "steps": cfg.steps, "synthetic_data": synthetic,
            "train_seconds_this_run": round(train_seconds, 1)}

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
  warnings = outcome_warnings(read_metrics(metrics_path), final_sum["accuracy"], final_sum["ci95"], cfg.ways)
  results = {"test_accuracy": final_sum["accuracy"], "test_ci95": final_sum["ci95"],
             "test_episodes": final_sum["episodes"], "checkpoint_step": int(final.step),
             "best_val_accuracy": top[0]["val_accuracy"] if top else -1.0, "steps": cfg.steps,
             "synthetic_data": synthetic,
             "eval_inner_steps": cfg.eval_inner_steps, "ways": cfg.ways, "shots": cfg.shots,
             "train_seconds_this_run": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - t0, 1),
             "diverged": any(w.startswith("training diverged") for w in warnings),
             "above_chance": not any("not above chance" in w for w in warnings), "warnings": warnings}
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
    state = init_state(model, cfg, jax.random.key(cfg.seed), input_shape(cfg))
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
