"""Test-wide JAX settings.

* Implicit rank promotion (adding a [C] vector to a [B, H, W, C] array without
  saying how) is an error, as in equinox's and flax's own suites: broadcasting
  mistakes then fail loudly instead of silently producing wrong shapes.
* One CPU device, as a user has: multi-device behaviour is tested in a
  subprocess that forces several host devices before JAX starts
  (`tests/test_sharding.py`), never by changing this process's device count.
* 64-bit floats are opt-in per test (the `x64` fixture), for gradient checks
  that need more precision than float32 gives.
"""
import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
  """Runs the test with `jax_enable_x64` on (float64 arrays, float64 tracing)."""
  with jax.enable_x64(True):
    yield


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: compiles large second-order graphs (tens of seconds on a CPU); "
      "deselect with -m 'not slow' for a quick run")
