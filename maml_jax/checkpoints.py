"""Checkpoints and the run's files in a workdir.

    workdir/config.json      the configuration of the run (checked on resume)
    workdir/checkpoints/N/   orbax checkpoints of the train state, latest few kept
    workdir/best/N/          the checkpoints with the best validation accuracy (`keep_best` of them)
    workdir/best.json        the best's step and accuracy (and the kept ones', best first)
    workdir/metrics.jsonl    one JSON line per log step
    workdir/results.json     the final meta-test evaluation

Every checkpoint folder carries `checksums.json` (the SHA-256 of each of its
files), written once orbax has finished the save and checked before anything
is restored: a damaged file is caught before orbax reads it, however it was
damaged.  A checkpoint without one (made before checksums were written, or
killed between orbax's commit and the checksum write) is restored with a
warning, verified only by its values being finite.

State is restored into a `jax.eval_shape` template, so resuming needs only the
step number.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from maml_jax.config import Config
from maml_jax.errors import UserError
from maml_jax import io
from maml_jax.models import input_shape, model_for
from maml_jax.train_step import TrainState, init_state

# Fields that may differ between a run and its resumption: they change how long,
# how verbosely or from where it runs, never what a step computes nor which
# checkpoint is chosen (test_ensemble changes only the final evaluation;
# time_budget only where an invocation stops).  Everything else (conv_impl,
# task_map, remat and precision change the floating-point results; val_every
# and val_episodes change the best checkpoint; keep_best, which best
# checkpoints exist) must match.  `steps` may change only with a constant
# schedule: the cosine schedule is stretched over `steps`.
RESUMABLE_FIELDS = {"steps", "log_every", "test_episodes", "test_ensemble", "checkpoint_every",
                    "keep_checkpoints", "data_dir", "manual_dir", "monitor_test", "on_device_data",
                    "time_budget"}


class IncompatibleRunError(UserError):
  pass


def write_json(path: str, obj: Any) -> None:
  """`maml_jax.io.write_json` on process 0 only: a multi-host run writes its files once."""
  if jax.process_index() == 0:
    io.write_json(path, obj)


def read_config(workdir: str) -> Config:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise IncompatibleRunError(f"{workdir} holds no run (no config.json); train one with `python run.py "
                               f"meta-train --workdir {workdir}`")
  try:
    with open(path) as f:
      d = json.load(f)
    if not isinstance(d, dict):
      raise ValueError(f"a JSON {type(d).__name__}, not an object")
    return Config.from_dict(d).validate()
  except (OSError, ValueError, TypeError) as e:
    raise IncompatibleRunError(f"{path}: not a readable run configuration ({e})") from None


def config_differences(old: Config, new: Config) -> dict[str, tuple]:
  """{field: (old, new)} of the differences that would change a resumed run's result."""
  diff = {f.name: (getattr(old, f.name), getattr(new, f.name)) for f in dataclasses.fields(Config)
          if getattr(old, f.name) != getattr(new, f.name) and f.name not in RESUMABLE_FIELDS}
  if old.steps != new.steps and "cosine" in (old.lr_schedule, new.lr_schedule):
    diff["steps"] = (old.steps, new.steps)   # the cosine schedule decays over `steps`
  return diff


def check_or_write_config(workdir: str, cfg: Config) -> None:
  """Writes config.json, or checks a present one against `cfg`."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    diff = config_differences(read_config(workdir), cfg)
    if diff:
      lines = "; ".join(f"{k}: {a!r} in the workdir, {b!r} now" for k, (a, b) in sorted(diff.items()))
      raise IncompatibleRunError(f"{workdir} holds a run with another configuration ({lines}); these "
                                 f"settings change the result. Use another --workdir, or the same settings.")
  write_json(path, cfg.to_dict())


CHECKSUMS = "checksums.json"


def _digests(folder: str) -> dict[str, str]:
  """{path relative to `folder`: sha256} of every file under `folder` but the checksum record."""
  out = {}
  for dp, dirs, fs in os.walk(folder):
    dirs.sort()
    for f in sorted(fs):
      rel = os.path.relpath(os.path.join(dp, f), folder)
      if rel != CHECKSUMS:
        out[rel] = io.sha256_file(os.path.join(dp, f))
  return out


def write_checksums(folder: str) -> None:
  """Records the SHA-256 of every file of a finished checkpoint folder (process 0 only)."""
  if jax.process_index() == 0:
    io.write_json(os.path.join(folder, CHECKSUMS), {"sha256": _digests(folder)})


def check_checksums(folder: str) -> bool:
  """Raises CheckpointError if a file of the checkpoint `folder` is missing or differs
  from its recorded SHA-256; returns False when the folder has no record (True
  when it was checked)."""
  if not os.path.isdir(folder):
    raise CheckpointError(f"{folder}: does not exist")
  path = os.path.join(folder, CHECKSUMS)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      recorded = json.load(f)["sha256"]
    if not isinstance(recorded, dict) or not recorded:
      raise ValueError("no files listed")
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise CheckpointError(f"{folder}: its {CHECKSUMS} does not read ({type(e).__name__}: {_short(e)})") from None
  actual = _digests(folder)
  missing = sorted(k for k in recorded if k not in actual)
  changed = sorted(k for k in recorded if k in actual and actual[k] != recorded[k])
  if missing or changed:
    named = lambda xs: ", ".join(xs[:3]) + (", ..." if len(xs) > 3 else "")
    parts = [f"{len(xs)} {what} ({named(xs)})" for xs, what in ((changed, "file(s) changed"), (missing, "missing"))
             if xs]
    raise CheckpointError(f"{folder}: damaged, fails its checksums: {'; '.join(parts)}")
  return True


def _check_files(folder: str) -> None:
  """`check_checksums`, warning when the folder has no checksum record."""
  if not check_checksums(folder):
    _warn(f"{folder}: no {CHECKSUMS} (a checkpoint of an older version, or its save was interrupted after "
          f"orbax's commit); restored with only its values checked")


def _state_dict(state: TrainState) -> dict:
  return {"step": state.step, "meta_params": state.meta_params, "opt_state": state.opt_state}


class CheckpointError(UserError):
  """No checkpoint of a workdir restores and verifies; the message lists each one tried and why."""


def _warn(msg: str) -> None:
  print(f"warning: {msg}", file=sys.stderr)


def verify(tree, step: int, where: str) -> None:
  """Raises CheckpointError unless `tree` (a restored state dict) is the checkpoint of
  `step` and every value is finite (a non-finite state is never saved, so one
  that is found was damaged on disk)."""
  if "step" in tree and int(tree["step"]) != step:
    raise CheckpointError(f"{where}: holds step {int(tree['step'])}, its folder says {step}")
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
      raise CheckpointError(f"{where}: {jax.tree_util.keystr(path)} holds non-finite values")


class Checkpoints:
  """Latest-N and best checkpoints of a run.

  Best and latest live in separate folders (`best/N`, `checkpoints/N`).  Every
  save is an orbax atomic rename, so a kill leaves each step either complete
  or absent.  A step that is saved again (a resumed run replays the steps
  after its checkpoint, bit-identically) replaces the one on disk, so best and
  latest never collide with a leftover of the interrupted run.  Best
  checkpoints are pruned by `prune_best`, never by orbax: the best (the
  `keep_best` best) as of every latest checkpoint must survive until that
  checkpoint is superseded.
  """

  def __init__(self, workdir: str, keep: int = 3):
    self.workdir = os.path.abspath(workdir)
    self.keep = keep
    self.latest = self._new_manager(False)
    self.best = self._new_manager(True)

  def _new_manager(self, best: bool):
    opts = ocp.CheckpointManagerOptions(max_to_keep=None if best else self.keep, create=True)
    return ocp.CheckpointManager(self.folder(best), options=opts)

  def _reopen(self, best: bool) -> None:
    """A fresh orbax manager: one whose restore failed keeps state that breaks its next save."""
    old = self._mngr(best)
    try:
      old.close()
    except Exception:   # noqa: BLE001 - a manager left broken by a failed restore may fail to close too
      pass
    if best:
      self.best = self._new_manager(True)
    else:
      self.latest = self._new_manager(False)

  def folder(self, best: bool = False, step: int | None = None) -> str:
    """`workdir/best` or `workdir/checkpoints`, or the folder of one step in it."""
    d = os.path.join(self.workdir, "best" if best else "checkpoints")
    return d if step is None else os.path.join(d, str(step))

  def _mngr(self, best: bool):
    return self.best if best else self.latest

  def steps(self, best: bool = False) -> list[int]:
    """The steps on disk, newest first."""
    mngr = self._mngr(best)
    mngr.reload()
    return sorted(mngr.all_steps(), reverse=True)

  def save(self, state: TrainState, best: bool = False) -> None:
    mngr, step = self._mngr(best), int(state.step)
    if step in mngr.all_steps():   # a leftover of an interrupted run: same step, replaced
      mngr.delete(step)
    mngr.save(step, args=ocp.args.StandardSave(_state_dict(state)), force=True)
    mngr.wait_until_finished()
    write_checksums(self.folder(best, step))

  def delete(self, step: int, best: bool = False) -> None:
    self._mngr(best).delete(step)

  def prune_best(self, keep: list[int], upto: int) -> None:
    """Deletes the best checkpoints of steps <= `upto` whose steps are not in `keep`
    (the current top-K's).  Those after `upto` are a resumed run's bests from
    before the interruption: the replay saves them again, and until then they
    are the only copy."""
    for s in self.steps(best=True):
      if s not in keep and s <= upto:
        self.best.delete(s)

  def usable_top(self, template: TrainState, records: list[dict], k: int) -> list[dict]:
    """The `k` best validations of `records` (metrics.jsonl lines) whose best
    checkpoint restores and verifies, best first.

    A best checkpoint that is missing or damaged is saved again from the latest
    checkpoint of the same step when that one verifies (it holds the same
    state); otherwise the next best validation takes its place, with a warning.
    Nothing readable is deleted here.
    """
    top = []
    for r in top_records(records, len(records)):
      if len(top) == k:
        break
      try:
        self.restore_step(template, r["step"], best=True)
      except CheckpointError as e:
        existed = os.path.isdir(self.folder(True, r["step"]))
        try:
          state = self.restore_step(template, r["step"])
        except CheckpointError:
          _warn(f"the best checkpoint of step {r['step']} (validation {100 * r['val_accuracy']:.2f}%) is "
                f"unusable ({e}) and no latest checkpoint of that step verifies; the next best validation "
                f"takes its place")
          continue
        self.save(state, best=True)
        if existed:   # a pruned one (superseded by a step that is now being replayed) is refilled silently
          _warn(f"the best checkpoint of step {r['step']} was unusable ({e}); saved again from "
                f"{self.folder(False, r['step'])}")
      top.append(r)
    return top

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore_step(self, template: TrainState, step: int, best: bool = False) -> TrainState:
    """The verified checkpoint of `step` restored into `template`; CheckpointError if damaged."""
    where = self.folder(best, step)
    if step not in self.steps(best):
      raise CheckpointError(f"{where}: does not exist")
    _check_files(where)
    try:
      d = self._mngr(best).restore(step, args=ocp.args.StandardRestore(_state_dict(template)))
    except Exception as e:   # orbax and tensorstore raise many types for damaged files
      self._reopen(best)
      raise CheckpointError(f"{where}: cannot be restored ({type(e).__name__}: {_short(e)})") from None
    verify(d, step, where)
    return TrainState(d["step"], d["meta_params"], d["opt_state"])

  def restore(self, template: TrainState, best: bool = False, step: int | None = None) -> TrainState:
    """Restores into `template` (a TrainState of arrays or ShapeDtypeStructs): the
    given step, or the newest one that restores and verifies (skipped ones are
    reported on stderr)."""
    if step is not None:
      return self.restore_step(template, step, best)
    return self.restore_newest(template, best)[0]

  def restore_newest(self, template: TrainState, best: bool = False) -> tuple[TrainState, list[str]]:
    """(state, reasons): the newest checkpoint that restores and verifies, and why
    each newer one was skipped (also printed as warnings)."""
    skipped = []
    for s in self.steps(best):
      try:
        state = self.restore_step(template, s, best)
      except CheckpointError as e:
        skipped.append(str(e))
        _warn(f"skipped checkpoint {s}: {e}")
        continue
      return state, skipped
    kind = "best" if best else "latest"
    raise CheckpointError(f"no {kind} checkpoint in {self.workdir} restores" +
                          (": " + "; ".join(skipped) if skipped else " (there is none)"))

  def close(self):
    self.latest.close()
    self.best.close()


def _short(e: BaseException, n: int = 200) -> str:
  s = " ".join(str(e).split())
  return s if len(s) <= n else s[:n] + "..."


def read_metrics(path: str, upto: int | None = None) -> list[dict]:
  """The JSON lines of metrics.jsonl with step <= `upto` (all if None); a line cut
  short by a kill is dropped."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      if isinstance(rec, dict) and isinstance(rec.get("step"), int) and (upto is None or rec["step"] <= upto):
        out.append(rec)
  return out


def truncate_metrics(path: str, upto: int) -> list[dict]:
  """Rewrites metrics.jsonl (atomically) without the steps after `upto`, which a
  resumed run logs again; returns the lines kept."""
  kept = read_metrics(path, upto)
  if os.path.exists(path) and jax.process_index() == 0:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)
  return kept


def top_records(lines: list[dict], k: int = 1) -> list[dict]:
  """[{"step", "val_accuracy"}] of the `k` best validations in `lines`, best first
  (ties: the earlier step), at most `k` of them."""
  recs = [{"step": r["step"], "val_accuracy": r["val_accuracy"]} for r in lines if "val_accuracy" in r]
  return sorted(recs, key=lambda r: (-r["val_accuracy"], r["step"]))[:k]


def best_json(top: list[dict], keep_best: int) -> dict:
  """best.json's contents: the best's {"step", "val_accuracy"}, and with
  keep_best > 1 the kept checkpoints' records, best first, as "top"."""
  return {**top[0], "top": top} if keep_best > 1 else dict(top[0])


def read_top(workdir: str) -> list[dict]:
  """best.json's "top" list ([{"step", "val_accuracy"}], best first); [] when
  there is none.  CheckpointError if best.json does not read."""
  path = os.path.join(workdir, "best.json")
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      top = json.load(f).get("top", [])
    return [{"step": int(r["step"]), "val_accuracy": float(r["val_accuracy"])} for r in top]
  except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
    raise CheckpointError(f"{path}: not a readable list of best checkpoints ({type(e).__name__}: {_short(e)})") \
        from None


def abstract_state(model, cfg: Config, image_shape) -> TrainState:
  """The train state's shapes and dtypes, without computing anything."""
  return jax.eval_shape(lambda k: init_state(model, cfg, k, image_shape), jax.random.key(0))


class Trained(NamedTuple):
  """A meta-trained model loaded from a workdir."""
  config: Config
  meta_params: Any
  model: Any
  step: int


def _restore_params(directory: str, step: int, template) -> Any:
  """Only the meta-parameters of one checkpoint (no optimizer state is read)."""
  t = {"step": template.step, "meta_params": template.meta_params}
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=dev), t)
  where = os.path.join(directory, str(step))
  _check_files(where)
  try:
    with ocp.CheckpointManager(directory) as mngr:
      d = mngr.restore(step, args=ocp.args.PyTreeRestore(t, restore_args=args, partial_restore=True))
  except Exception as e:   # orbax and tensorstore raise many types for damaged files
    raise CheckpointError(f"{where}: cannot be restored ({type(e).__name__}: {_short(e)})") from None
  verify(d, step, where)
  return d["meta_params"]


def load_trained(workdir: str, which: str = "best") -> Trained:
  """The meta-parameters of a workdir's best (or latest) checkpoint, restored
  without the optimizer state.  A checkpoint that does not restore or verify is
  skipped with a warning for the next older one (best first, then latest, for
  `which="best"`).  A run that keeps several best checkpoints (`keep_best`)
  tries them in best.json's order first: the newest is not the best there."""
  cfg = read_config(workdir)
  model = model_for(cfg)   # the run's network, in its precision
  template = abstract_state(model, cfg, input_shape(cfg))
  kinds = ["best", "checkpoints"] if which == "best" else ["checkpoints"]
  skipped = []
  for kind in kinds:
    directory = os.path.join(os.path.abspath(workdir), kind)
    steps = sorted((int(n) for n in (os.listdir(directory) if os.path.isdir(directory) else []) if n.isdigit()),
                   reverse=True)
    if kind == "best" and cfg.keep_best > 1:
      try:
        ranked = [r["step"] for r in read_top(workdir) if r["step"] in steps]
      except CheckpointError as e:
        _warn(f"{e}; best checkpoints tried newest first")
        ranked = []
      steps = ranked + [s for s in steps if s not in ranked]
    for step in steps:
      try:
        params = _restore_params(directory, step, template)
      except CheckpointError as e:
        skipped.append(str(e))
        _warn(f"skipped checkpoint {kind}/{step}: {e}")
        continue
      return Trained(cfg, params, model, step)
  if skipped:
    raise CheckpointError(f"no checkpoint of {workdir} restores: " + "; ".join(skipped))
  raise CheckpointError(f"{workdir} holds no checkpoint; train with `python run.py meta-train "
                        f"--workdir {workdir}`")


def load_ensemble(workdir: str, k: int) -> list[Trained]:
  """The meta-parameters of a workdir's `k` best checkpoints by validation
  (best.json's list), best first.  UserError if the run kept fewer than `k`;
  CheckpointError if one does not restore (none is replaced: the ensemble
  would no longer be the top k)."""
  cfg = read_config(workdir)
  if k > cfg.keep_best:
    raise UserError(f"--ensemble {k}: {workdir} keeps its {cfg.keep_best} best checkpoint(s) by validation "
                    f"(keep_best={cfg.keep_best}); ask for at most {cfg.keep_best}, or meta-train with "
                    f"--keep-best {k}")
  top = read_top(workdir)
  if len(top) < k:
    raise UserError(f"--ensemble {k}: {workdir} holds {len(top)} best checkpoint(s) (steps "
                    f"{', '.join(str(r['step']) for r in top) or 'none'}: fewer validations than {k} so far)")
  model = model_for(cfg)   # the run's network, in its precision
  template = abstract_state(model, cfg, input_shape(cfg))
  directory = os.path.join(os.path.abspath(workdir), "best")
  return [Trained(cfg, _restore_params(directory, r["step"], template), model, r["step"]) for r in top[:k]]
