"""Meta-train step timing on random data, for the workloads of the peer benchmark.

| name       | network  | input    | episode                  | tasks | inner steps |
|------------|----------|----------|--------------------------|-------|-------------|
| paper      | scratch7 | 64x64x1  | 5-way 20-shot 15-query   | 2     | 5           |
| paper-lite | scratch7 | 64x64x1  | 5-way 5-shot 5-query     | 2     | 2           |
| omniglot   | conv4    | 28x28x1  | 5-way 1-shot 15-query    | 32    | 1           |

All second order, inner lr 0.01, Adam, batch norm on batch statistics: the
same as `learn2learn` in the peer script, so the two compare like with like.
"""
from __future__ import annotations

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from maml_jax.config import Config
from maml_jax.episodes import Episodes, episode_labels
from maml_jax.models import model_for
from maml_jax.train_step import init_state, make_mesh, make_train_step, replicate, shard_batch

WORKLOADS = {
    # remat: without it the 5 stored inner steps need ~30 GB on the CPU.
    "paper": Config(model="scratch7", image_size=64, ways=5, shots=20, queries=15, tasks=2,
                    inner_steps=5, inner_lr=0.01, remat=True),
    "paper-lite": Config(model="scratch7", image_size=64, ways=5, shots=5, queries=5, tasks=2,
                         inner_steps=2, inner_lr=0.01),
    "omniglot": Config(model="conv4", image_size=28, ways=5, shots=1, queries=15, tasks=32,
                       inner_steps=1, inner_lr=0.01),
}


def random_batch(cfg: Config, seed: int = 0) -> Episodes:
  rng = np.random.default_rng(seed)
  shape = (cfg.image_size, cfg.image_size, cfg.channels)
  sx = rng.random((cfg.tasks, cfg.ways * cfg.shots) + shape, np.float32)
  qx = rng.random((cfg.tasks, cfg.ways * cfg.queries) + shape, np.float32)
  return Episodes(jnp.asarray(sx), jnp.asarray(episode_labels(cfg.tasks, cfg.ways, cfg.shots)),
                  jnp.asarray(qx), jnp.asarray(episode_labels(cfg.tasks, cfg.ways, cfg.queries)))


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(cfg: Config, repeats: int = 3):
  """Compiles one meta-train step, then times `repeats` steps.

  Returns:
    (median seconds per meta-batch, all timings, compile+first-step seconds).
  """
  model = model_for(cfg)
  mesh = make_mesh(cfg.tasks)
  state = replicate(init_state(model, cfg, jax.random.key(cfg.seed), (cfg.image_size, cfg.image_size, cfg.channels)), mesh)
  step = make_train_step(model, cfg, mesh)
  batch = shard_batch(random_batch(cfg), mesh)
  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  if not np.isfinite(float(metrics["loss"])):
    raise FloatingPointError(f"non-finite loss in benchmark {cfg}")
  return statistics.median(times), times, first
