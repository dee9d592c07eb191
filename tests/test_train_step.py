"""The jitted meta-train step (`maml_jax.train_step`) on one device: frozen
parameters stay bit-identical, the step compiles once, and meta-training on
SYNTHETIC classes learns.

The network is `OneBlock` (see test_maml.py) with the `tiny` preset's episode
settings: the step's machinery does not depend on the network, and a deeper
one costs tens of seconds of compilation per configuration on a CPU.
"""
import functools
import math

import chex
import jax
import numpy as np
import pytest

from maml_jax import maml, train_step as ts
from maml_jax.config import get_preset
from maml_jax.data_sources import load_splits, synthetic_classes
from maml_jax.episodes import EpisodeSampler
from test_maml import OneBlock

TINY = get_preset("tiny")
SHAPE = (TINY.image_size, TINY.image_size, TINY.channels)


# The engine's initialisation compiled as one function: flax initialises op by
# op otherwise, which takes seconds.
init_state = jax.jit(ts.init_state, static_argnums=(0, 1, 3))


def _sampler(data, cfg, seed, tasks=None):
  return EpisodeSampler(data, tasks=tasks or cfg.tasks, ways=cfg.ways, shots=cfg.shots,
                        queries=cfg.queries, seed=seed)


# ------------------------------------------------------------------ one step

# One meta-train step, shared with test_sharding.py (which repeats it on 4
# devices): the tiny preset's episodes with 4 tasks per meta-batch, and an
# outer mask that freezes the conv biases.  (Those feed batch norm, so their
# meta-gradient is rounding noise, which Adam's normalised first step would
# turn into arbitrary moves of about meta_lr.)
STEP_CFG = TINY.replace(tasks=4, outer_mask=r"^(?!.*conv/bias$)")


def one_step(devices: int = 1):
  """One meta-train step from a fixed initialisation on `devices` CPU devices.

  Returns:
    ({parameter path: float32 array} before and after the step, {metric: float}).
  """
  return _one_device_step() if devices == 1 else _one_step(devices)


def _one_step(devices):
  cfg = STEP_CFG
  mesh = ts.make_mesh(cfg.tasks, jax.devices("cpu")[:devices])
  assert mesh.devices.size == devices
  model = OneBlock(cfg.ways)
  state = ts.replicate(init_state(model, cfg, jax.random.key(0), SHAPE), mesh)
  names = jax.tree.leaves(maml.path_names(state.meta_params))
  before = {n: np.array(x) for n, x in zip(names, jax.tree.leaves(state.meta_params))}   # copies
  data = synthetic_classes(12, 20, cfg.image_size, cfg.channels, seed=0)
  batch = ts.shard_batch(_sampler(data, cfg, seed=0)(0), mesh)
  # Each device holds its share of the tasks.
  assert {s.data.shape[0] for s in batch.support_x.addressable_shards} == {cfg.tasks // devices}
  state, metrics = ts.make_train_step(model, cfg, mesh)(state, batch)   # donates `state`
  after = {n: np.asarray(x) for n, x in zip(names, jax.tree.leaves(state.meta_params))}
  return before, after, {k: float(v) for k, v in metrics.items()}


_one_device_step = functools.lru_cache(maxsize=1)(lambda: _one_step(1))


def test_outer_mask_freezes_the_other_parameters_bit_for_bit():
  before, after, metrics = one_step()
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  assert any(n.endswith("conv/bias") for n in before)
  for name in before:
    if name.endswith("conv/bias"):
      np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    else:   # Adam's first step moves every trained tensor by about meta_lr = 1e-3
      assert np.abs(after[name] - before[name]).max() > 5e-4, name


# ------------------------------------------------------------- a short run

# Settings: the tiny preset's episodes (3-way 1-shot, 2 queries per class, 2
# tasks per batch, one inner step) with a meta learning rate and an inner
# learning rate suited to the one-block network (0.4 overshoots on its
# 54-feature head); 100 steps take about a second after compiling.
TRAIN = TINY.replace(meta_lr=1e-2, inner_lr=0.1, seed=0)
STEPS = 100


@pytest.fixture(scope="module")
def short_run():
  cfg = TRAIN
  splits = load_splits(cfg)
  assert splits["train"].synthetic
  model, mesh = OneBlock(cfg.ways), ts.make_mesh(cfg.tasks)
  # Held-out episodes from the validation classes (never trained on), 64 tasks,
  # evaluated outside the device mesh.
  held_out = _sampler(splits["val"], cfg, seed=1000, tasks=64)(0)
  evaluate = jax.jit(lambda m, b: maml.meta_loss(m, b, model=model, cfg=cfg)[1])
  state = ts.replicate(init_state(model, cfg, jax.random.key(cfg.seed), SHAPE), mesh)
  before = jax.device_get(evaluate(state.meta_params, held_out))   # compiled before the count starts
  train = _sampler(splits["train"], cfg, seed=cfg.seed)

  traces, original = [], maml.meta_loss

  def counted_meta_loss(*args, **kwargs):
    traces.append(1)
    return original(*args, **kwargs)

  chex.clear_trace_counter()
  with pytest.MonkeyPatch.context() as mp:
    # The step looks `maml.meta_loss` up when it is traced: this counts its
    # traces, and chex raises on a second one.
    mp.setattr(maml, "meta_loss", chex.assert_max_traces(counted_meta_loss, n=1))
    step = ts.make_train_step(model, cfg, mesh)
    losses = []
    for i in range(STEPS):      # a new batch every step: same shapes, new values
      state, metrics = step(state, ts.shard_batch(train(i), mesh))
      losses.append(metrics["loss"])
  after = jax.device_get(evaluate(state.meta_params, held_out))
  return dict(traces=len(traces), losses=np.array(jax.device_get(losses)), before=before, after=after)


def test_train_step_compiles_once(short_run):
  assert short_run["traces"] == 1          # traced for the first step only, never again


def test_meta_training_learns_on_held_out_classes(short_run):
  losses, before, after = short_run["losses"], short_run["before"], short_run["after"]
  assert np.all(np.isfinite(losses))
  chance = math.log(TRAIN.ways)
  # Post-adaptation query loss on unseen classes: lower than at the start by a
  # clear margin, and better than a uniform guess (ln 3 = 1.099).  Over six
  # seeds it fell by 0.15-0.46 to 0.94-1.02, accuracy 0.45-0.57.
  assert after["loss"] < before["loss"] - 0.1, (before, after)
  assert after["loss"] < chance - 0.04, after
  assert after["accuracy"] > 1 / TRAIN.ways + 0.06, after
  assert losses[-10:].mean() < losses[:10].mean() - 0.05
