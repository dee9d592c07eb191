"""Two processes on this machine (jax.distributed, gloo CPU collectives) meta-train
the tiny configuration and end with the parameters of one process.

The one-process reference runs the same program on two CPU devices (one task
each, as the two processes have): then the meta-gradient's all-reduce adds
the same two numbers in either case and the parameters agree bit for bit.  (A
one-device run averages the tasks in another order; Adam turns the rounding
difference on gradients that are zero in exact arithmetic, such as a
convolution bias before batch norm, into steps of the learning rate's size.)"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from maml_jax.checkpoints import load_trained
from maml_jax.distributed import DistributedSetupError, settings_from_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["meta-train", "--preset", "tiny", "--steps", "3", "--val-every", "0", "--test-episodes", "2",
        "--no-progress"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
  return dict(env, MAML_JAX_COMPILATION_CACHE="", JAX_PLATFORMS="cpu", **extra)


def test_settings_from_env():
  assert settings_from_env({}) is None
  assert settings_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}) \
      == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
  with pytest.raises(DistributedSetupError, match="JAX_PROCESS_ID"):
    settings_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
  with pytest.raises(DistributedSetupError, match="0..1"):
    settings_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})


@pytest.mark.slow
def test_two_processes_train_the_parameters_of_one(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  subprocess.run([sys.executable, "run.py", *ARGS, "--workdir", one], cwd=ROOT, check=True,
                 env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), capture_output=True, timeout=600)
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "run.py", *ARGS, "--workdir", two, "--distributed"], cwd=ROOT,
                            env=_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                     JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert all("2 peer" in o or "connected to 1 peer" in o for o in outs), outs   # really two processes
  a, b = load_trained(one, "latest"), load_trained(two, "latest")
  assert a.step == b.step == 3
  diffs = [float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
           for x, y in zip(jax.tree.leaves(a.meta_params), jax.tree.leaves(b.meta_params))]
  print(f"max |one - two| over {len(diffs)} parameter arrays: {max(diffs):.3g}")
  assert max(diffs) == 0.0
