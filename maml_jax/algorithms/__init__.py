"""Meta-learning algorithms, one module each, all behind one interface
(`base.Algorithm`), picked by `--algorithm NAME` (`Config.algorithm`).

  maml      second-order MAML (first order, derivative-order annealing and the
            other MAML++ options as settings; inner rules in `maml_jax.inner_rules`)
  anil      MAML with only the output layer adapting in the inner loop
  reptile   Reptile (Nichol et al. 2018): inner SGD, the pseudo-gradient
            (initialisation - adapted) / (inner_lr * inner_steps)
  protonet  prototypical networks (Snell et al. 2017): no inner loop

Adding one is a module with an `ALGORITHM` and a line in `ALGORITHMS`.
"""
from __future__ import annotations

from typing import Any

from maml_jax.algorithms import anil, maml, protonet, reptile
from maml_jax.algorithms.base import Algorithm

# name -> algorithm (a registry as data).
ALGORITHMS: dict[str, Algorithm] = {m.ALGORITHM.name: m.ALGORITHM for m in (maml, anil, reptile, protonet)}


def unknown(name: str) -> str:
  return f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}"


def get(name: str) -> Algorithm:
  """The named algorithm; ConfigError (listing the known ones) if there is none."""
  from maml_jax.config import ConfigError
  if name not in ALGORITHMS:
    raise ConfigError(unknown(name))
  return ALGORITHMS[name]


def pinned(name: str) -> dict[str, Any]:
  """{field: value} of the settings the algorithm does not leave to the user:
  its unused ones at the base configuration's values, and its fixed ones."""
  from maml_jax.config import Config
  alg = get(name)
  base = Config()
  return {**{f: getattr(base, f) for f in alg.unused}, **alg.fixed}


def problems(cfg) -> list[str]:
  """Why `cfg` cannot run under its algorithm ([] if it can)."""
  if cfg.algorithm not in ALGORITHMS:
    return [unknown(cfg.algorithm)]
  alg = ALGORITHMS[cfg.algorithm]
  out = []
  for f, v in pinned(cfg.algorithm).items():
    if getattr(cfg, f) != v:
      out.append(f"algorithm={alg.name} sets {f}={v!r} itself (got {getattr(cfg, f)!r})" if f in alg.fixed else
                 f"algorithm={alg.name} does not use {f} (got {getattr(cfg, f)!r}; leave it at {v!r})")
  return out + alg.problems(cfg)


def _flag(field: str, value) -> str:
  name = field.replace("_", "-")
  if isinstance(value, bool):
    return f"--{name}" if value else f"--no-{name}"
  return f"--{name} {value}"


def configure(cfg, explicit: dict[str, Any]):
  """`cfg` (a preset) with the settings given on the command line (`explicit`,
  {field: value}) applied, under the algorithm they name (else the preset's).
  The preset's settings that the algorithm pins take the pinned values; an
  explicit one that conflicts with them is a ConfigError naming the options."""
  from maml_jax.config import ConfigError
  name = explicit.get("algorithm", cfg.algorithm)
  pins = pinned(name)
  bad = {f: v for f, v in explicit.items() if f in pins and v != pins[f]}
  if bad:
    flags = ", ".join(_flag(f, v) for f, v in bad.items())
    fixed = {f: pins[f] for f in bad if f in get(name).fixed}
    why = "; " + ", ".join(f"it sets {f}={v!r} itself" for f, v in fixed.items()) if fixed else ""
    raise ConfigError(f"--algorithm {name} does not apply {flags}{why}: drop them")
  return cfg.replace(**pins).replace(**explicit)
