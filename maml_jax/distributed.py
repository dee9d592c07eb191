"""Several hosts running one meta-training: `jax.distributed` from a flag or the environment.

The same command runs on every host (JAX's multi-controller model): each
process draws the same episodes from the same seeds, its share of every
meta-batch's tasks runs on its own devices, and the meta-gradients are
averaged across all of them by the step's `pmean`.  Only process 0 writes the
run's JSON files; orbax coordinates the checkpoints itself.

Start it with `--distributed` and the coordinator's settings in the
environment (names as JAX's own `JAX_COORDINATOR_ADDRESS`):

    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python run.py meta-train ...
    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 python run.py meta-train ...

`JAX_COORDINATOR_ADDRESS` alone (with the other two) turns it on without the
flag; `--distributed` without them lets JAX detect the cluster (Slurm, Open
MPI, Cloud TPU).  On CPUs the collectives are gloo's (JAX's default).
"""
from __future__ import annotations

import os

import numpy as np

from maml_jax.errors import UserError

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class DistributedSetupError(UserError):
  """The multi-host settings are incomplete or malformed; the message names them."""


def settings_from_env(environ=None) -> dict | None:
  """{"coordinator_address", "num_processes", "process_id"} from the environment,
  or None when JAX_COORDINATOR_ADDRESS is not set."""
  env = os.environ if environ is None else environ
  if not env.get(ENV[0]):
    return None
  missing = [k for k in ENV[1:] if not env.get(k)]
  if missing:
    raise DistributedSetupError(f"{ENV[0]} is set but {', '.join(missing)} is not; set all of {', '.join(ENV)}")
  try:
    n, i = int(env[ENV[1]]), int(env[ENV[2]])
  except ValueError:
    raise DistributedSetupError(f"{ENV[1]}={env[ENV[1]]!r} and {ENV[2]}={env[ENV[2]]!r} must be "
                                f"whole numbers") from None
  if n < 1 or not 0 <= i < n:
    raise DistributedSetupError(f"{ENV[2]}={i} must be in 0..{ENV[1]}-1 = 0..{n - 1}")
  return {"coordinator_address": env[ENV[0]], "num_processes": n, "process_id": i}


def maybe_initialize(flag: bool = False, environ=None) -> bool:
  """Starts `jax.distributed` when `flag` is set or the environment names a
  coordinator; returns whether it did.  Must run before any JAX computation."""
  import jax
  settings = settings_from_env(environ)
  if not flag and settings is None:
    return False
  jax.distributed.initialize(**(settings or {}))
  return True


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0, or the only one)."""
  import jax
  return jax.process_index() == 0


def to_host(x) -> np.ndarray:
  """A (possibly multi-host sharded) array as one numpy array on every process."""
  import jax
  if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
