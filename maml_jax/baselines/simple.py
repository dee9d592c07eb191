"""Simple few-shot classifiers on frozen feature vectors.

* Nearest class mean ("prototypes"): each class is the mean of its support
  features after L2 normalisation; a query goes to the class of highest cosine
  similarity.  No training, nothing to tune.
* Linear probe: multinomial logistic regression on L2-normalised features,
  with an L2 penalty on the weights, fitted to convergence by L-BFGS (the
  problem is strictly convex, so the answer does not depend on the optimiser).

The settings below were fixed before any query result was seen.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax

# Cosine similarities lie in [-1, 1]; scaling them by 10 before the softmax
# gives usable probabilities (the argmax, and so the accuracy, is unaffected).
COSINE_TEMPERATURE = 10.0
# Logistic regression: mean cross-entropy + LINEAR_PROBE_L2 / 2 * ||W||^2 on
# unit-norm features (the bias is not penalised); L-BFGS iterations.
LINEAR_PROBE_L2 = 1e-2
LINEAR_PROBE_ITERATIONS = 100


def l2_normalise(f, eps: float = 1e-8):
  """Rows of f [n, D] scaled to unit L2 norm (zero rows stay zero)."""
  f = jnp.asarray(f, jnp.float32)
  return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), eps)


def class_means(features, labels, ways: int):
  """Mean feature of each class: [ways, D] from features [n, D], labels int [n]."""
  onehot = jax.nn.one_hot(labels, ways, dtype=jnp.float32)          # [n, ways]
  return (onehot.T @ features) / jnp.maximum(onehot.sum(0)[:, None], 1.0)


@functools.partial(jax.jit, static_argnames=("ways",))
def prototype_logits(support_f, support_y, query_f, *, ways: int, temperature: float = COSINE_TEMPERATURE):
  """Nearest-class-mean logits: temperature x cosine(query, class mean).

  Args:
    support_f: float [n, D]; support_y: int [n] in 0..ways-1; query_f: float [m, D].
  Returns:
    float32 [m, ways].
  """
  protos = l2_normalise(class_means(l2_normalise(support_f), support_y, ways))
  return temperature * l2_normalise(query_f) @ protos.T


def _probe_loss(params, f, y, l2):
  logits = f @ params["w"] + params["b"][None]
  ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
  return ce + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))


@functools.partial(jax.jit, static_argnames=("ways", "iterations"))
def fit_linear_probe(support_f, support_y, *, ways: int, l2: float = LINEAR_PROBE_L2,
                     iterations: int = LINEAR_PROBE_ITERATIONS):
  """L2-regularised multinomial logistic regression on unit-norm features.

  Args:
    support_f: float [n, D]; support_y: int [n] in 0..ways-1.
  Returns:
    (params {"w": [D, ways], "b": [ways]}, objective before each iteration
    and after the last, float32 [iterations + 1]).
  """
  f = l2_normalise(support_f)
  y = jnp.asarray(support_y, jnp.int32)
  loss = functools.partial(_probe_loss, f=f, y=y, l2=l2)
  params = {"w": jnp.zeros((f.shape[1], ways), jnp.float32), "b": jnp.zeros((ways,), jnp.float32)}
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(p, updates), state), value

  (params, _), values = lax.scan(step, (params, opt.init(params)), None, length=iterations)
  return params, jnp.append(values, loss(params))


@jax.jit
def linear_probe_logits(params, query_f):
  """Logits float32 [m, ways] of query features [m, D]."""
  return l2_normalise(query_f) @ params["w"] + params["b"][None]
