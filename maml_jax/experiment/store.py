"""The resumable results store of an experiment folder.

    <out>/results.jsonl     one JSON line per finished cell of the grid
    <out>/experiment.json   the settings each data set's cells were computed with

A cell is (dataset, method, backbone, shots, repeat).  Every finished cell is
added at once, and the whole file is rewritten through a temporary file and
`os.replace`, so a run killed at any moment leaves a complete, readable file;
on restart the cells already there are skipped.

The settings record guards against mixing: cells computed with other settings
(seed, queries, backbone, budgets, data, meta-trained models, ...) cannot be
resumed into the same folder.
"""
from __future__ import annotations

import json
import os

from maml_jax.errors import UserError
from maml_jax import io as files

RESULTS, SETTINGS = "results.jsonl", "experiment.json"
KEY_FIELDS = ("dataset", "method", "backbone", "shots", "repeat")


class SettingsMismatchError(UserError):
  """The output folder holds results computed with other settings."""


def cell_key(record: dict) -> tuple:
  return tuple(record[k] for k in KEY_FIELDS)


class ResultsStore:
  """The finished cells of `<out>/results.jsonl`, and a way to add more."""

  def __init__(self, out_dir: str):
    self.path = os.path.join(out_dir, RESULTS)
    self.records: list[dict] = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for lineno, line in enumerate(f, 1):
          if not line.strip():
            continue
          try:
            rec = json.loads(line)
            cell_key(rec)
          except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.path}:{lineno}: not a result record ({e}); remove the line or use "
                             f"another --out") from None
          self.records.append(rec)
    self._done = {cell_key(r) for r in self.records}

  def done(self, key: tuple) -> bool:
    return key in self._done

  def add(self, record: dict) -> None:
    """Adds one finished cell and rewrites the file atomically."""
    key = cell_key(record)
    if key in self._done:
      raise ValueError(f"cell {key} is already in {self.path}")
    self.records.append(record)
    self._done.add(key)
    files.write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))

  def for_dataset(self, dataset: str) -> list[dict]:
    return [r for r in self.records if r["dataset"] == dataset]


def _load_settings(out_dir: str) -> dict:
  path = os.path.join(out_dir, SETTINGS)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


# What an experiment folder holds (`report.write` adds its tables, plots and
# report); a folder holding only `cache/` is one whose first run stopped early.
OUTPUT_FILES = ("experiment.json", "results.jsonl", "xray-split.json", "cache", "report.md", "results.json",
                "table2.md", "table3.md", "table4.md", "accuracy_vs_shots_metadataset.png",
                "accuracy_vs_shots_smi.png", "roi_accuracy_smi.png")


def check_settings(out_dir: str, dataset: str, fixed: dict, models: dict, record: bool = True) -> None:
  """Records the settings of `dataset`'s cells in experiment.json, or checks them
  (only checks, with `record=False`).

  `fixed` (seed, queries, backbones, budgets, data, ...) must equal what is
  recorded.  `models` (column -> identity of its meta-learned model) must agree
  on the columns recorded before; new columns are added.  Raises
  SettingsMismatchError naming each difference.
  """
  saved = _load_settings(out_dir)
  entry = saved.get(dataset)
  new_fixed, new_models = json.loads(json.dumps(fixed)), json.loads(json.dumps(models))
  if entry is not None:
    old_fixed, old_models = entry.get("settings", {}), entry.get("models", {})
    diff = [(k, old_fixed.get(k), new_fixed.get(k)) for k in sorted(set(old_fixed) | set(new_fixed))
            if old_fixed.get(k) != new_fixed.get(k)]
    diff += [(f"model of {k}", old_models[k], new_models[k]) for k in sorted(set(old_models) & set(new_models))
             if old_models[k] != new_models[k]]
    if diff:
      lines = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff)
      raise SettingsMismatchError(f"{out_dir} holds {dataset} results computed with other settings ({lines}). "
                                  f"Use another --out, or the same settings.")
    new_models = {**old_models, **new_models}
  if not record:
    return
  saved[dataset] = {"settings": new_fixed, "models": new_models}
  os.makedirs(out_dir, exist_ok=True)
  files.write_json(os.path.join(out_dir, SETTINGS), saved)


def settings_of(out_dir: str) -> dict:
  """experiment.json's content ({} when absent)."""
  return _load_settings(out_dir)


def log_run(out_dir: str, entry: dict) -> None:
  """Appends one run's command, times and cell count to experiment.json's "runs"."""
  saved = _load_settings(out_dir)
  saved.setdefault("runs", []).append(entry)
  os.makedirs(out_dir, exist_ok=True)
  files.write_json(os.path.join(out_dir, SETTINGS), saved)
