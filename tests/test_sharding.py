"""A meta-train step sharded over 4 devices equals the same step on one.

The 4 devices are forced CPU host devices in a subprocess (the flag must be
set before JAX starts, and the rest of the suite runs on one device, as a user
does); this process computes the one-device step meanwhile.  The step is
test_train_step.py's `one_step`: the `tiny` preset's episodes, 4 tasks per
meta-batch so that each of the 4 devices adapts one task.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

from test_train_step import one_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICES = 4


def test_four_devices_give_the_one_device_step(tmp_path):
  out = tmp_path / "four_devices.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}",
             PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  proc = subprocess.Popen([sys.executable, __file__, str(out)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    initial, one, one_metrics = one_step(1)        # while the subprocess runs
  finally:
    log, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, log[-4000:]
  with np.load(out) as f:
    four = {k.replace("|", "/"): f[k] for k in f.files}
  four_metrics = json.loads(out.with_suffix(".json").read_text())

  assert four.keys() == one.keys()
  for k in ("loss", "accuracy", "grad_norm"):
    np.testing.assert_allclose(four_metrics[k], one_metrics[k], rtol=1e-5, err_msg=k)
  for name, p in one.items():
    np.testing.assert_allclose(four[name], p, rtol=0, atol=1e-6, err_msg=name)
  # A real comparison: the step moved the trained tensors by about meta_lr =
  # 1e-3, three orders of magnitude above the tolerance.
  assert max(np.abs(p - initial[n]).max() for n, p in one.items()) > 5e-4


if __name__ == "__main__":   # the subprocess, with DEVICES forced CPU devices
  jax.config.update("jax_numpy_rank_promotion", "raise")
  assert jax.device_count() == DEVICES, jax.devices()
  _, params, metrics = one_step(DEVICES)
  target = pathlib.Path(sys.argv[1])
  tmp = target.with_name(target.name + ".tmp.npz")
  np.savez(tmp, **{k.replace("/", "|"): v for k, v in params.items()})
  os.replace(tmp, target)
  target.with_suffix(".json").write_text(json.dumps(metrics))
