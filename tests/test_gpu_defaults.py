"""XLA's GPU defaults: added only where JAX will run on an NVIDIA GPU, never over the user's own flags.

That they change nothing on a CPU run is pinned by
tests/test_stopping.py::test_ctrl_c_stops_at_a_step_boundary_and_resumes_bit_identically
(a `run.py` process, through this code, against an in-process run without it).
"""
import jax

from maml_jax import gpu_defaults
from maml_jax.gpu_defaults import GPU_XLA_FLAGS, apply_gpu_defaults

FLAG = GPU_XLA_FLAGS[0].split("=")[0]


def test_nothing_is_added_without_an_nvidia_gpu(monkeypatch):
  env = {"XLA_FLAGS": "--xla_cpu_foo=1"}
  if jax.default_backend() == "cpu":   # this machine, as JAX itself sees it
    assert apply_gpu_defaults(env) == [] and env == {"XLA_FLAGS": "--xla_cpu_foo=1"}
  monkeypatch.setattr(gpu_defaults, "_cuda_plugin_installed", lambda: True)
  monkeypatch.setattr(gpu_defaults.glob, "glob", lambda pattern: ["/dev/nvidia0"])
  for env in ({"JAX_PLATFORMS": "cpu"}, {"CUDA_VISIBLE_DEVICES": ""}, {"MAML_JAX_GPU_DEFAULTS": "0"}):
    assert apply_gpu_defaults(env) == [] and "XLA_FLAGS" not in env
  monkeypatch.setattr(gpu_defaults, "_cuda_plugin_installed", lambda: False)
  assert apply_gpu_defaults({}) == []


def test_on_a_gpu_the_flag_is_added_and_the_users_own_value_kept(monkeypatch):
  monkeypatch.setattr(gpu_defaults, "nvidia_gpu_expected", lambda environ: True)
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
  assert apply_gpu_defaults(env) == list(GPU_XLA_FLAGS)
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d " + GPU_XLA_FLAGS[0]
  assert apply_gpu_defaults(env) == [] and env["XLA_FLAGS"].count(FLAG) == 1   # applied once
  mine = {"XLA_FLAGS": f"{FLAG}=FUSION"}
  assert apply_gpu_defaults(mine) == [] and mine == {"XLA_FLAGS": f"{FLAG}=FUSION"}
  fresh = {"JAX_PLATFORMS": "cuda,cpu"}
  assert apply_gpu_defaults(fresh) == list(GPU_XLA_FLAGS) and fresh["XLA_FLAGS"] == GPU_XLA_FLAGS[0]
