"""Test-wide JAX settings.

* Implicit rank promotion (adding a [C] vector to a [B, H, W, C] array without
  saying how) raises, so that broadcasting mistakes fail the tests.
* One CPU device, as a user has: multi-device behaviour is tested in a
  subprocess that forces several host devices before JAX starts
  (`tests/test_sharding.py`), never by changing this process's device count.
* 64-bit floats are opt-in per test (the `x64` fixture), for gradient checks
  that need more precision than float32 gives.
"""
import atexit
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# Many tests compile the same small steps: a per-run compilation cache turns
# the repeats into cache hits (tens of seconds each on a 2-core CPU).  It is
# removed when the run ends.
_CACHE_DIR = tempfile.mkdtemp(prefix="maml_jax_test_cache_")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir holding the tiny configuration's initial (0-step) checkpoint,
  5-way: an untrained but fixed network for the adaptation tests."""
  from maml_jax import checkpoints
  from maml_jax.config import get_preset
  from maml_jax.models import model_for
  from maml_jax.train_step import init_state
  wd = str(tmp_path_factory.mktemp("run"))
  cfg = get_preset("tiny").replace(ways=5)
  checkpoints.check_or_write_config(wd, cfg)
  state = init_state(model_for(cfg), cfg, jax.random.key(0), (cfg.image_size, cfg.image_size, cfg.channels))
  ck = checkpoints.Checkpoints(wd, 1)
  ck.save(state)
  ck.close()
  return wd


@pytest.fixture
def x64():
  """Runs the test with `jax_enable_x64` on (float64 arrays, float64 tracing)."""
  with jax.enable_x64(True):
    yield


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: compiles large second-order graphs (tens of seconds on a CPU); "
      "deselect with -m 'not slow' for a quick run")


class Killed(BaseException):
  """Stands in for SIGKILL at one instruction (tools/kill_campaign.py sends real ones)."""


def train_killed_at_best_json(monkeypatch, cfg, workdir, when, before_kill=None):
  """Meta-trains `cfg` in `workdir` and stops it, as a kill would, at the first
  write of best.json whose content satisfies `when(obj)`: that step's best
  checkpoint is saved, best.json and the next latest checkpoint are not.
  `before_kill()` runs just before the stop (to look at the files then)."""
  from maml_jax import train
  real = train.write_json

  def write_json(path, obj):
    if path.endswith("best.json") and when(obj):
      if before_kill:
        before_kill()
      raise Killed()
    real(path, obj)
  monkeypatch.setattr(train, "write_json", write_json)
  with pytest.raises(Killed):
    train.train_and_evaluate(cfg, workdir, progress=False)
  monkeypatch.setattr(train, "write_json", real)
