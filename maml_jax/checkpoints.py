"""Checkpoints and the run's files in a workdir.

    workdir/config.json      the configuration of the run (checked on resume)
    workdir/checkpoints/N/   orbax checkpoints of the train state, latest few kept
    workdir/best/N/          the checkpoint with the best validation accuracy
    workdir/best.json        its step and accuracy
    workdir/metrics.jsonl    one JSON line per log step
    workdir/results.json     the final meta-test evaluation

State is restored into a `jax.eval_shape` template, so resuming needs only the
step number.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from maml_jax.config import Config
from maml_jax.errors import UserError
from maml_jax.io import write_json
from maml_jax.models import build_model
from maml_jax.train_step import TrainState, init_state

# Fields that may differ between a run and its resumption: they change how long
# or how verbosely it runs, not what it computes per step.
RESUMABLE_FIELDS = {"steps", "log_every", "val_every", "val_episodes", "test_episodes",
                    "checkpoint_every", "keep_checkpoints", "data_dir", "on_device_data",
                    "conv_impl", "task_map", "remat", "monitor_test", "manual_dir"}


class IncompatibleRunError(UserError):
  pass


def read_config(workdir: str) -> Config:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} holds no run (no config.json); train one with `python run.py meta-train "
                            f"--workdir {workdir}`")
  with open(path) as f:
    return Config.from_dict(json.load(f))


def check_or_write_config(workdir: str, cfg: Config) -> None:
  """Writes config.json, or checks a present one against `cfg`."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    old = read_config(workdir)
    diff = {f.name: (getattr(old, f.name), getattr(cfg, f.name)) for f in dataclasses.fields(Config)
            if getattr(old, f.name) != getattr(cfg, f.name) and f.name not in RESUMABLE_FIELDS}
    if diff:
      lines = "; ".join(f"{k}: {a!r} in the workdir, {b!r} now" for k, (a, b) in sorted(diff.items()))
      raise IncompatibleRunError(f"{workdir} holds a run with another configuration ({lines}). "
                                 f"Use another --workdir, or the same settings.")
  write_json(path, cfg.to_dict())


def _state_dict(state: TrainState) -> dict:
  return {"step": state.step, "meta_params": state.meta_params, "opt_state": state.opt_state}


class Checkpoints:
  """Latest-N and best checkpoints of a run."""

  def __init__(self, workdir: str, keep: int = 3):
    self.workdir = os.path.abspath(workdir)
    opts = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True)
    self.latest = ocp.CheckpointManager(os.path.join(self.workdir, "checkpoints"), options=opts(keep))
    self.best = ocp.CheckpointManager(os.path.join(self.workdir, "best"), options=opts(1))

  def save(self, state: TrainState, best: bool = False) -> None:
    mngr = self.best if best else self.latest
    mngr.save(int(state.step), args=ocp.args.StandardSave(_state_dict(state)), force=True)
    mngr.wait_until_finished()

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore(self, template: TrainState, best: bool = False, step: int | None = None) -> TrainState:
    """Restores into `template` (a TrainState of arrays or ShapeDtypeStructs)."""
    mngr = self.best if best else self.latest
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no {'best' if best else ''} checkpoint in {self.workdir}")
    d = mngr.restore(step, args=ocp.args.StandardRestore(_state_dict(template)))
    return TrainState(d["step"], d["meta_params"], d["opt_state"])

  def close(self):
    self.latest.close()
    self.best.close()


def abstract_state(model, cfg: Config, image_shape) -> TrainState:
  """The train state's shapes and dtypes, without computing anything."""
  return jax.eval_shape(lambda k: init_state(model, cfg, k, image_shape), jax.random.key(0))


class Trained(NamedTuple):
  """A meta-trained model loaded from a workdir."""
  config: Config
  meta_params: Any
  model: Any
  step: int


def load_trained(workdir: str, which: str = "best") -> Trained:
  """The meta-parameters of a workdir's best (or latest) checkpoint."""
  cfg = read_config(workdir)
  model = build_model(cfg.model, cfg.ways, cfg.conv_impl, cfg.width)
  template = abstract_state(model, cfg, (cfg.image_size, cfg.image_size, cfg.channels))
  ck = Checkpoints(workdir, cfg.keep_checkpoints)
  try:
    use_best = which == "best" and ck.best.latest_step() is not None
    if not use_best and ck.latest_step() is None:
      raise FileNotFoundError(f"{workdir} holds no checkpoint; train with `python run.py meta-train "
                              f"--workdir {workdir}`")
    state = ck.restore(template, best=use_best)
  finally:
    ck.close()
  return Trained(cfg, state.meta_params, model, int(state.step))
