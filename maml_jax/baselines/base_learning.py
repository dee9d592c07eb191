"""The paper's "Base Learning": conventional training on the support set only.

Two variants, matching the paper's two networks:

* transfer (network (a)): the pretrained convolutions are frozen, so their
  output is a fixed feature vector per image; a fully connected head (3 hidden
  layers of 256 units, then the N-way output) is trained from random
  initialisation on the support images' features (`fit_head`).
* scratch (network (b)): the whole network is trained from random
  initialisation on the support images (`fit_network`).  Batch norm uses the
  support batch's statistics while training; queries are classified with the
  support set's statistics (as the meta-learned networks are), so each query's
  prediction depends on the support set and itself only.

Both use full-batch Adam for a fixed number of steps.  The budget below was
fixed before any query result was looked at and is not tuned per data set or
per shot count: a fair "standard optimiser" baseline, not a tuned one.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from maml_jax import maml
from maml_jax.models.feature_head import HEAD_HIDDEN, FeatureHead  # noqa: F401 (the head base learning trains)

# Training budget, chosen a priori (not from query results): 100 full-batch
# Adam steps at Adam's customary learning rate 1e-3, no augmentation (no flips:
# left/right and up/down carry meaning in hand X-rays), no weight decay.
TRAIN_STEPS = 100
LEARNING_RATE = 1e-3
AUGMENTATION = "none"
@functools.partial(jax.jit, static_argnames=("model",))
def init_params(model, key, x):
  """Random initial parameters of `model` for inputs like x (jitted once per model and shape)."""
  return model.init(key, x)["params"]


class Fit(NamedTuple):
  params: Any
  losses: jax.Array   # float32 [steps + 1]: support loss before each step and after the last


@functools.partial(jax.jit, static_argnames=("model", "steps", "learning_rate"))
def train(model, params, x, y, *, steps: int = TRAIN_STEPS, learning_rate: float = LEARNING_RATE) -> Fit:
  """Full-batch Adam on the support cross-entropy.

  Args:
    model: a Flax module, `apply({"params": p}, x) -> logits [n, ways]`.
    params: the starting parameters.
    x: float32 [n, ...] support inputs (images or features); y: int32 [n].
  Returns:
    Fit(params after `steps` steps, support losses [steps + 1]).
  """
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    return maml.cross_entropy(model.apply({"params": p}, x), y)

  def step(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), loss

  (params, _), losses = lax.scan(step, (params, tx.init(params)), None, length=steps)
  return Fit(params, jnp.append(losses, loss_fn(params)))


def fit_head(features, y, *, ways: int, key, steps: int = TRAIN_STEPS,
             learning_rate: float = LEARNING_RATE) -> tuple[FeatureHead, Fit]:
  """Transfer learning: a fresh FC head trained on frozen support features.

  Args:
    features: float32 [n, D]; y: int32 [n] in 0..ways-1; key: initialisation.
  Returns:
    (the head module, its Fit).
  """
  head = FeatureHead(ways)
  features = jnp.asarray(features, jnp.float32)
  params = init_params(head, key, features[:1])
  return head, train(head, params, features, jnp.asarray(y, jnp.int32), steps=steps, learning_rate=learning_rate)


def head_probs(head: FeatureHead, params, features) -> jax.Array:
  """Class probabilities float32 [m, ways] of query features [m, D]."""
  return jax.nn.softmax(head.apply({"params": params}, jnp.asarray(features, jnp.float32)), -1)


def fit_network(model, x, y, *, key, steps: int = TRAIN_STEPS, learning_rate: float = LEARNING_RATE) -> Fit:
  """Scratch: the whole network from random initialisation on support images.

  Args:
    model: e.g. `build_model("scratch7", ways)`.
    x: float32 [n, H, W, C] in [0, 1]; y: int32 [n].
  """
  x = jnp.asarray(x, jnp.float32)
  params = init_params(model, key, x[:2])
  return train(model, params, x, jnp.asarray(y, jnp.int32), steps=steps, learning_rate=learning_rate)


@functools.partial(jax.jit, static_argnames=("model",))
def network_probs(model, params, support_x, query_x) -> jax.Array:
  """Query probabilities float32 [m, ways], batch norm on the support set's statistics."""
  return jax.nn.softmax(maml.predict_logits(params, support_x, query_x, model=model), -1)
