"""Episode evaluation: the one way the project scores a meta-trained
initialisation on N-way K-shot episodes of held-out classes.

Training's validation, its final meta-test, `evaluate`, `adapt --dataset
omniglot|meta-test` and the feature-head meta-training all call
`episode_accuracies` with the sharded, jitted eval step of `train_step`, on
episodes drawn by `eval_sampler`: episode batch i is a pure function of (seed,
i), so the same (data, seed, tasks, ways, shots, queries) gives the same
episodes everywhere.  Accuracies are summarised by `summary` with the t
interval of `maml_jax.stats`.

MAML++'s top-K ensemble (`ensemble_accuracy`) is scored by the same loop:
each of K initialisations is adapted on an episode's support set and the
ensemble's answer is the argmax of their averaged query class probabilities.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from maml_jax import algorithms, maml
from maml_jax.config import Config
from maml_jax.data.class_images import ClassImages
from maml_jax.data.progress import progress as progress_bar
from maml_jax.episodes import EpisodeSampler
from maml_jax.stats import mean_ci

# Fixed seeds: every validation sees the same episodes, and so does every
# meta-test evaluation of a run (training's final one and `evaluate`'s).
VAL_SEED, TEST_SEED = 1_000_003, 2_000_003


def eval_sampler(data: ClassImages, cfg: Config, seed: int, *, shots: Optional[int] = None,
                 queries: Optional[int] = None) -> EpisodeSampler:
  """Batches of `cfg.tasks` evaluation episodes (`cfg.eval_queries` queries per class
  unless `queries` is given; `cfg.shots` unless `shots` is)."""
  return EpisodeSampler(data, tasks=cfg.tasks, ways=cfg.ways, shots=cfg.shots if shots is None else shots,
                        queries=cfg.eval_queries if queries is None else queries, seed=seed,
                        on_device=cfg.on_device_data and jax.process_count() == 1)


def episode_accuracies(eval_step, meta_params, sampler: EpisodeSampler, episodes: int, mesh,
                       desc: str = "evaluating", progress: bool = True) -> np.ndarray:
  """Query accuracy of each of the first `episodes` episodes of `sampler`: float [episodes].

  `eval_step` is `train_step.make_eval_step(model, cfg, mesh, steps)`;
  `meta_params` are replicated over `mesh`.
  """
  from maml_jax.distributed import to_host
  from maml_jax.train_step import shard_batch
  tasks = sampler.shape["tasks"]
  accs = []
  for i in progress_bar(range(math.ceil(episodes / tasks)), desc=desc, unit="batch", disable=not progress,
                        leave=False):
    accs.append(eval_step(meta_params, shard_batch(sampler(i), mesh)))
  return np.concatenate([to_host(a) for a in accs])[:episodes]


def summary(accs) -> dict:
  """{"accuracy": mean, "ci95": t half-width, "std", "episodes": n} of per-episode accuracies."""
  s = mean_ci(accs)
  return {"accuracy": s["mean"], "ci95": s["ci95"], "std": s["std"], "episodes": s["n"]}


def query_probs(meta_params, sx, sy, qx, *, model, cfg: Config, steps: int) -> jax.Array:
  """Query class probabilities [m, ways] of one initialisation after `steps`
  inner steps on the support set (sx [n, H, W, C], sy int [n]; qx [m, H, W, C]),
  by the configuration's algorithm."""
  _, logits = algorithms.get(cfg.algorithm).adapt_and_score(meta_params, sx, sy, qx, model=model, cfg=cfg,
                                                            steps=steps, query_bn=cfg.query_bn)
  return jax.nn.softmax(logits)


def ensemble_accuracy(members, sx, sy, qx, qy, *, model, cfg: Config, steps: int) -> jax.Array:
  """Query accuracy [] of an ensemble on one task: `members` are K meta-param
  pytrees stacked on a leading axis [K, ...]; each is adapted on the support
  set on its own, and the answer is the argmax of their mean query class
  probabilities [m, ways].  (`lax.map`: one member's adaptation in memory at a time.)"""
  probs = jax.lax.map(lambda mp: query_probs(mp, sx, sy, qx, model=model, cfg=cfg, steps=steps), members)
  return maml.accuracy(probs.mean(0), qy)


def stack_members(meta_params: list):
  """K meta-param pytrees -> one pytree whose leaves are stacked [K, ...]."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *meta_params)


def make_ensemble_step(model, cfg: Config, mesh, steps: Optional[int] = None):
  """`train_step.make_eval_step` scoring `ensemble_accuracy`: `(stacked members, batch) -> accuracy [T]`."""
  from maml_jax.train_step import make_eval_step
  return make_eval_step(model, cfg, mesh, steps,
                        task_accuracy=functools.partial(ensemble_accuracy, model=model, cfg=cfg))


def ensemble_label(steps: list[int]) -> str:
  """How a result that uses the ensemble says so."""
  return (f"ensemble of the top-{len(steps)} checkpoints by validation, steps "
          f"{', '.join(str(s) for s in steps)}")


def evaluate_params(model, cfg: Config, meta_params, data: ClassImages, *, episodes: int, seed: int,
                    steps: Optional[int] = None, shots: Optional[int] = None, queries: Optional[int] = None,
                    desc: str = "meta-test", progress: bool = True) -> np.ndarray:
  """Per-episode accuracies [episodes] of `meta_params` on `data`'s classes, after
  `steps` inner steps (default `cfg.eval_inner_steps`): mesh, eval step and
  sampler set up here, for callers outside the training loop.  A list of
  meta-params is scored as their ensemble (`ensemble_accuracy`)."""
  from maml_jax.train_step import make_eval_step, make_mesh, replicate
  mesh = make_mesh(cfg.tasks)
  if isinstance(meta_params, list):
    eval_step, meta_params = make_ensemble_step(model, cfg, mesh, steps), stack_members(meta_params)
  else:
    eval_step = make_eval_step(model, cfg, mesh, steps)
  sampler = eval_sampler(data, cfg, seed, shots=shots, queries=queries)
  return episode_accuracies(eval_step, replicate(meta_params, mesh), sampler, episodes, mesh, desc, progress)
