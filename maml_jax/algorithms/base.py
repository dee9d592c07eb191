"""The interface every meta-learning algorithm implements (`Algorithm`).

An algorithm is a record of pure functions over pytrees that the jitted
steps call, so that the training loop, the evaluator and the learner never
ask which algorithm they run:

  meta_params = init(model, cfg, key, image_shape)
      {"model": network params, "lr": the inner rule's learned rates ({} if none)}
  grads, metrics = meta_grads(meta_params, batch, model=, cfg=, meta_step=)
      batch: `Episodes` with the task axis first ([tasks, n, H, W, C] ...);
      grads: the meta-gradient (or pseudo-gradient), shaped like meta_params,
      averaged over the tasks; metrics: {"loss", "accuracy", ...} float32 [],
      averaged over the tasks.  meta_step: int32 [], the meta-batch index.
  params, logits = adapt_and_score(meta_params, sx, sy, qx, model=, cfg=, steps=, query_bn=)
      one task at evaluation: sx [n, H, W, C], sy int32 [n], qx [m, H, W, C];
      params: the task's network parameters (a plain `model.apply` of them
      scores new images, as `learner.predict_fn` does); logits [m, ways].

`unused` names the settings (Config fields) that have no meaning for the
algorithm and stay at the base configuration's values; `fixed` the settings
that the algorithm sets itself ({field: value}); `problems(cfg)` lists any
other setting it cannot run with.  `maml_jax.algorithms.configure` and
`Config.validate` enforce them.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Algorithm(NamedTuple):
  """One meta-learning algorithm (see the module docstring)."""
  name: str
  init: Callable
  meta_grads: Callable
  adapt_and_score: Callable
  unused: tuple[str, ...] = ()
  fixed: dict[str, Any] = {}
  problems: Callable[[Any], list[str]] = lambda cfg: []
