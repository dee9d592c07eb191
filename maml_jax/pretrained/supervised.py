"""Plain supervised pretraining of a backbone on the meta-training classes.

The "Base Learning" alternative to ImageNet weights when none are at hand:
train the network to classify all meta-training classes at once (one softmax
over every class, Adam, a few epochs), then keep its convolutions and give it a
fresh head for N-way tasks (`transfer_backbone`).  Works offline on any
meta-dataset loaded as a `ClassImages`.
"""
from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maml_jax.data.class_images import ClassImages
from maml_jax.data.progress import progress as progress_bar


class EpochStats(NamedTuple):
  loss: float       # mean training cross-entropy over the epoch
  accuracy: float   # mean training accuracy over the epoch


def class_labels(data: ClassImages) -> np.ndarray:
  """int32 [N]: the class of each row of `data.images`."""
  labels = np.full(len(data.images), -1, np.int32)
  for c, (s, n) in enumerate(zip(data.class_start, data.class_count)):
    labels[s:s + n] = c
  return labels


@functools.partial(jax.jit, static_argnames=("model", "optimizer"), donate_argnums=(0, 1))
def _train_step(params, opt_state, x, y, *, model, optimizer):
  def loss_fn(p):
    logits = model.apply({"params": p}, x.astype(jnp.float32) / 255.0)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()

  (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss, acc


def pretrain(model, data: ClassImages, *, epochs: int = 5, batch_size: int = 64,
             learning_rate: float = 1e-3, seed: int = 0, params: Optional[Any] = None,
             progress: bool = True) -> tuple[Any, list[EpochStats]]:
  """Trains `model` to classify every class of `data`.

  Args:
    model: a Flax module `model.apply({"params": p}, x) -> logits [B, num_classes]`
      with x float32 [B, H, W, C] in [0, 1]; its head must have
      `data.num_classes` outputs (e.g. `build_model(name, ways=data.num_classes)`).
    data: the meta-training split (uint8 images).
    epochs, batch_size, learning_rate: plain Adam on shuffled mini-batches; the
      last incomplete batch of an epoch is dropped (one compiled shape).
    seed: initialisation and shuffling.
    params: start from these instead of a fresh initialisation.
  Returns:
    (params, per-epoch EpochStats).
  """
  labels = class_labels(data)
  if batch_size > len(labels):
    raise ValueError(f"batch_size {batch_size} exceeds the {len(labels)} training images")
  key = jax.random.key(seed)
  x0 = jnp.zeros((1,) + data.image_shape, jnp.float32)
  probe = jax.eval_shape(lambda k: model.init_with_output(k, x0)[0], key)   # no compute
  if probe.shape[-1] != data.num_classes:
    raise ValueError(f"the model has {probe.shape[-1]} outputs; pretraining on this data needs "
                     f"{data.num_classes} (one per class)")
  if params is None:
    params = jax.jit(model.init)(key, x0)["params"]
  optimizer = optax.adam(learning_rate)
  params = jax.tree.map(jnp.array, params)   # a private copy: the step donates it
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(seed)
  steps = len(labels) // batch_size
  history = []
  for epoch in range(epochs):
    order = rng.permutation(len(labels))
    losses, accs = [], []
    bar = progress_bar(range(steps), desc=f"pretrain epoch {epoch + 1}/{epochs}", disable=not progress)
    for i in bar:
      rows = np.sort(order[i * batch_size:(i + 1) * batch_size])   # sorted: memmap-friendly
      params, opt_state, loss, acc = _train_step(
          params, opt_state, jnp.asarray(data.images[rows]), jnp.asarray(labels[rows]),
          model=model, optimizer=optimizer)
      losses.append(loss)
      accs.append(acc)
      if i % 20 == 0 or i == steps - 1:   # a host sync only now and then
        bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(acc):.3f}")
    loss, acc = float(jnp.mean(jnp.stack(losses))), float(jnp.mean(jnp.stack(accs)))
    if not np.isfinite(loss):
      raise FloatingPointError(f"pretraining loss became {loss} in epoch {epoch + 1}")
    history.append(EpochStats(loss, acc))
  return params, history


def transfer_backbone(source: dict, target: dict, exclude: str = r"^head(/|$)") -> dict:
  """`target` with every parameter taken from `source` except those whose path
  ('/'-joined) matches `exclude` (by default the head, which has a different
  number of classes).

  Raises ValueError naming the path when a transferred shape differs or a
  parameter is missing from `source`.
  """
  flat_src = {_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}

  def pick(path, t):
    name = _path(path)
    if re.search(exclude, name):
      return t
    if name not in flat_src:
      raise ValueError(f"pretrained parameters have no '{name}'")
    if flat_src[name].shape != t.shape:
      raise ValueError(f"'{name}': pretrained shape {flat_src[name].shape}, target {t.shape}")
    return flat_src[name]

  return jax.tree_util.tree_map_with_path(pick, target)


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
