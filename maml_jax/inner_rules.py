"""Inner-loop update rules: how one inner step turns gradients into updates.

Each rule is a pair of pure functions shaped like optax's
`GradientTransformation`, kept apart from the model and the algorithm (as
MAML++'s `inner_loop_optimizers.py` is), so that the inner loop only asks
"update these parameters":

  rates = rule.init(params)                  # the rule's meta-learned rates ({} if none)
  updates = rule.update(grads, rates, step)  # params + updates = the step's result

`step` is the inner step's index (an int or traced int32 []).  The rates live
in the meta-parameters (`{"model": params, "lr": rates}`), so the outer loop
learns them with the initialisation.  `rule.rate(params, rates, step)` is
the learning rate of each tensor at that step (a scalar, or per element), for
inspection and tests; `update` is `-rate * grads`.

Rules (`RULES`, picked from the configuration by `from_config`):
  sgd       a fixed rate, `inner_lr` (MAML)
  lslr      MAML++'s learned per-layer per-step rates: leaves [steps]; a step
            beyond the trained ones reuses the last rate
  meta-sgd  Meta-SGD's learned per-element rates: leaves [1, *param.shape],
            the same at every step
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class InnerRule(NamedTuple):
  """An inner-loop update rule (see the module docstring)."""
  init: Callable[[PyTree], PyTree]                 # params -> rates
  update: Callable[[PyTree, PyTree, Any], PyTree]  # (grads, rates, step) -> updates
  rate: Callable[[PyTree, PyTree, Any], PyTree]    # (params, rates, step) -> each tensor's rate at the step


def _descent(init, rate) -> InnerRule:
  """The rule with `update = -rate * grads`."""
  def update(grads, rates, step):
    return jax.tree.map(lambda g, r: -(r * g), grads, rate(grads, rates, step))
  return InnerRule(init, update, rate)


def sgd(lr: float) -> InnerRule:
  """Plain SGD at the fixed rate `lr` (a float32 scalar per tensor); no learned rates."""
  return _descent(lambda params: {}, lambda params, rates, step: jax.tree.map(lambda _: jnp.float32(lr), params))


def lslr(lr: float, steps: int) -> InnerRule:
  """MAML++'s LSLR: one learned rate per parameter tensor and inner step, each
  starting at `lr`; rates float32 [max(steps, 1)] per tensor."""
  return _descent(lambda params: jax.tree.map(lambda _: jnp.full((max(steps, 1),), lr, jnp.float32), params),
                  lambda params, rates, step: jax.tree.map(lambda r: r[jnp.minimum(step, r.shape[0] - 1)], rates))


def meta_sgd(lr: float) -> InnerRule:
  """Meta-SGD: one learned rate per parameter element, the same at every step;
  rates float32 [1, *param.shape], each starting at `lr`."""
  return _descent(lambda params: jax.tree.map(lambda w: jnp.full((1,) + w.shape, lr, jnp.float32), params),
                  lambda params, rates, step: jax.tree.map(lambda r: r[0], rates))


# name -> factory(config) (a registry as data: a new rule is one function and one line).
RULES: dict[str, Callable[[Any], InnerRule]] = {
    "sgd": lambda cfg: sgd(cfg.inner_lr),
    "lslr": lambda cfg: lslr(cfg.inner_lr, cfg.inner_steps),
    "meta-sgd": lambda cfg: meta_sgd(cfg.inner_lr),
}


def rule_name(cfg) -> str:
  """The rule a configuration asks for (`learn_inner_lr`, `inner_lr_per_element`)."""
  return "lslr" if cfg.learn_inner_lr else "meta-sgd" if cfg.inner_lr_per_element else "sgd"


def from_config(cfg) -> InnerRule:
  """The configuration's inner rule."""
  return RULES[rule_name(cfg)](cfg)
