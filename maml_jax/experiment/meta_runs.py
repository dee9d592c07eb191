"""Meta-trained scratch networks for the grid: given workdirs, or trained here.

A meta-learned method on the scratch network (network (b)) needs a
meta-trained workdir.  The user names one per method (`--meta-workdir
meta=runs/paper`, `--workdir` for "meta"), or the experiment meta-trains it
itself into `<out>/meta-train/<method>-scratch` with the engine's
`train_and_evaluate`, from the `paper-scratch` preset with the variant's flags
(first order for FOMAML, inner loop on the head only for ANIL) and the
`--meta-steps` budget.  Such a run resumes from its checkpoints when the
experiment is restarted.

Meta-test classes must not have been seen in meta-training: a workdir whose
class split puts any of the experiment's test classes into its meta-train or
meta-validation set is refused.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional

from maml_jax.config import Config, get_preset, parse_field
from maml_jax.errors import UserError

# The meta-learning variants, for the scratch network and the feature head
# alike: method -> (algorithm of `maml_jax.algorithms`, its settings).
VARIANTS = {"meta": ("maml", {}), "fomaml": ("maml", {"first_order": True}), "anil": ("anil", {})}


def variant_config(cfg: Config, method: str) -> Config:
  """`cfg` (a preset) under the variant's algorithm and settings."""
  from maml_jax import algorithms
  if method not in VARIANTS:
    raise ValueError(f"no meta-learning variant {method!r}; choose from {sorted(VARIANTS)}")
  name, flags = VARIANTS[method]
  return algorithms.configure(cfg, {"algorithm": name, **flags})


class LeakError(UserError):
  """A meta-trained model saw some of the experiment's test classes."""


def scratch_config(method: str, *, dataset: str, data_dir: str, split_seed: int, spec, seed: int,
                   steps: Optional[int], overrides: dict[str, Any], manual_dir: str = "",
                   image_folder: str = "") -> Config:
  """The `paper-scratch` preset for one variant, on the experiment's data and network."""
  cfg = variant_config(get_preset("paper-scratch").replace(
      dataset=dataset, data_dir=data_dir, manual_dir=manual_dir, image_folder=image_folder,
      split_seed=split_seed, model=spec.model, width=spec.width, image_size=spec.image_size,
      channels=spec.channels, seed=seed), method)
  if steps is not None:
    cfg = cfg.replace(steps=steps)
  return cfg.replace(**overrides).validate()


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
  """['shots=5', 'inner_steps=1'] -> typed Config overrides; errors name the bad item."""
  import dataclasses
  fields = {f.name: f for f in dataclasses.fields(Config)}
  out: dict[str, Any] = {}
  for item in items:
    name, sep, value = item.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in fields:
      raise UserError(f"--meta-set {item!r}: expected FIELD=VALUE with FIELD a meta-train setting "
                       f"(e.g. shots=5, inner_steps=1); known fields: {', '.join(sorted(fields))}")
    typ = str(fields[name].type)
    try:
      out[name] = parse_field(name, value)
    except ValueError:
      kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(typ, "text")
      raise UserError(f"--meta-set {item!r}: {name} takes {kind}, got {value!r}") from None
  return out


def ensure_trained(cfg: Config, workdir: str, progress: bool = True) -> str:
  """Meta-trains `cfg` in `workdir` unless it finished there before; returns workdir."""
  from maml_jax.train import train_and_evaluate
  done = os.path.join(workdir, "results.json")
  if os.path.exists(done):
    with open(done) as f:
      if json.load(f).get("steps") == cfg.steps:
        return workdir
  has_ckpt = os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(os.path.join(workdir, "checkpoints"))
  train_and_evaluate(cfg, workdir, resume=bool(has_ckpt), progress=progress)
  return workdir


def check_disjoint(workdir: str, test_classes: Iterable[str]) -> None:
  """Raises LeakError if the workdir's meta-train/val classes include a test class."""
  path = os.path.join(workdir, "splits.json")
  if not os.path.exists(path):
    return   # not trained on the meta-dataset (e.g. Omniglot): no class in common
  with open(path) as f:
    split = json.load(f)
  seen = set(split.get("train", [])) | set(split.get("val", []))
  leaked = sorted(seen & set(test_classes))
  if leaked:
    raise LeakError(f"{workdir} was meta-trained on {len(leaked)} of the experiment's test classes "
                    f"(e.g. {leaked[0]}); its split_seed or datasets differ from the experiment's. "
                    f"Use --split-seed {split.get('seed')} or a workdir trained with the same split.")


def identity(workdir: str, step: int) -> str:
  return f"{os.path.abspath(workdir)}@{step}"
