"""Running the grid of cells: (method, backbone) x shots x repeats on one source.

For each (shots, repeat) the episode is drawn once, from (seed, shots,
repeat), and every column classifies it; so all methods see identical support
and query images.  The key handed to the columns (random initialisations) is
`fold_in(fold_in(key(seed), shots), repeat)`, the same for every column.

Each finished cell is added to the results store at once; cells already in
the store are skipped, so a killed run picks up where it stopped and gives the
same numbers as an uninterrupted one.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import numpy as np

from maml_jax.data.progress import progress as progress_bar
from maml_jax.experiment import paper
from maml_jax.experiment.methods import CropTask, Predictor
from maml_jax.experiment.sources import Draw, TaskSource
from maml_jax.experiment.store import ResultsStore
from maml_jax.smi import voting


def cell_key_fn(seed: int) -> Callable[[int, int], jax.Array]:
  return lambda shots, repeat: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), shots), repeat)


def crop_task(source: TaskSource, draw: Draw) -> CropTask:
  """Image rows -> crop rows; every support crop carries its image's label."""
  return CropTask(source.crop_rows(draw.support), np.repeat(draw.support_y, source.rois).astype(np.int32),
                  source.crop_rows(draw.query))


def score(probs: np.ndarray, query_y: np.ndarray, rois: int) -> dict:
  """Scores of one cell from query-crop probabilities [m * rois, C].

  One crop per image: accuracy of the argmax.  Several ROIs per image: the
  majority vote (the paper's rule) is `accuracy`; also the probability-average
  vote and each ROI alone.
  """
  return voting.scores(np.asarray(probs).reshape(len(query_y), rois, -1), query_y)


def run(source: TaskSource, columns: Sequence[tuple[str, str]], predictors: dict[tuple[str, str], Predictor],
        store: ResultsStore, *, shots: Sequence[int], repeats: int, seed: int, progress: bool = True) -> int:
  """Computes every missing cell; returns how many were computed."""
  columns = paper.column_order(columns)
  todo = [(k, r, c) for k in shots for r in range(repeats) for c in columns
          if not store.done((source.name, c[0], c[1], k, r))]
  key_of = cell_key_fn(seed)
  tag = " [SYNTHETIC data]" if source.synthetic else ""
  bar = progress_bar(total=len(todo), desc=f"{source.name} grid{tag}", unit="cell", disable=not progress)
  draws: dict[tuple[int, int], Draw] = {}
  for k, r, (method, backbone) in todo:
    if (k, r) not in draws:
      draws = {(k, r): source.draw(k, r)}   # drawn once per (shots, repeat), shared by all columns
    draw = draws[(k, r)]
    bar.set_postfix_str(f"{method}/{backbone} {k}-shot #{r}")
    start = time.perf_counter()
    probs = predictors[(method, backbone)](crop_task(source, draw), key_of(k, r))
    if not np.all(np.isfinite(probs)):
      raise FloatingPointError(f"{method}/{backbone} gave non-finite probabilities ({k} shots, repeat {r})")
    record = {"dataset": source.name, "method": method, "backbone": backbone, "shots": int(k), "repeat": int(r),
              **score(probs, draw.query_y, source.rois), "queries": int(len(draw.query_y)),
              "episode": draw.digest(), "synthetic": source.synthetic,
              "seconds": round(time.perf_counter() - start, 3)}
    store.add(record)
    bar.update(1)
  bar.close()
  return len(todo)
