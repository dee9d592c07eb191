"""Runs that stop early and resume: a spent time budget, Ctrl-C.

Both stop at a step boundary with a checkpoint of that step and no
results.json; `--resume` continues the same run, bit-identically.
"""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from maml_jax import cli
from maml_jax.checkpoints import Checkpoints, load_trained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _same_run(a, b, validated=True):
  """The end states of two finished workdirs are equal: parameters bit for bit,
  best checkpoint, metrics.jsonl but its timings, the meta-test accuracy."""
  for which in ("latest", "best") if validated else ("latest",):
    x, y = load_trained(a, which), load_trained(b, which)
    assert x.step == y.step
    for u, v in zip(jax.tree.leaves(x.meta_params), jax.tree.leaves(y.meta_params)):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  lines = lambda w: [{k: v for k, v in json.loads(l).items() if k != "train_seconds"}
                     for l in open(os.path.join(w, "metrics.jsonl"))]
  assert lines(a) == lines(b)
  read = lambda w, f: json.load(open(os.path.join(w, f)))
  if validated:
    assert read(a, "best.json") == read(b, "best.json")
  assert read(a, "results.json")["test_accuracy"] == read(b, "results.json")["test_accuracy"]


# Step 1 validates (its best checkpoint is saved) but is neither a checkpoint
# nor a log step: a run stopped there must keep its best-checkpoint bookkeeping.
OPTS = ["--preset", "tiny", "--val-every", "1", "--checkpoint-every", "2", "--log-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted 2-step run."""
  w = str(tmp_path_factory.mktemp("straight"))
  assert cli.main(["meta-train", *OPTS, "--steps", "2", "--workdir", w]) == 0
  return w


def test_time_budget_stops_each_slot_and_the_resumed_run_is_bit_identical(straight, tmp_path, capsys):
  # A budget far below one step: every invocation runs exactly one step (the
  # check comes after it) and stops there; the last step finishes the run.
  w = str(tmp_path / "slots")
  slot = ["meta-train", *OPTS, "--steps", "2", "--workdir", w, "--resume", "--time-budget", "1e-9"]
  capsys.readouterr()
  assert cli.main(slot) == 0
  assert capsys.readouterr().out.splitlines()[-1] == \
      "time budget of 1e-09 min spent at step 1 of 2; --resume continues"
  assert not os.path.exists(os.path.join(w, "results.json"))   # not a finished run
  assert Checkpoints(w).steps() == [1] and Checkpoints(w).steps(best=True) == [1]
  assert cli.main(slot) == 0
  assert "meta-test 3-way 1-shot accuracy" in capsys.readouterr().out
  _same_run(straight, w)


def test_ctrl_c_stops_at_a_step_boundary_and_resumes_bit_identically(straight, tmp_path):
  # The command line as a user runs it (the GPU-defaults step included, a no-op
  # on this CPU), Ctrl-C as soon as the progress shows (during the first
  # step's compilation): it stops after step 1.  The resumed run is in this
  # process, without that step: equal parameters show it changes nothing here.
  w = str(tmp_path / "w")
  # SIGINT back to its default in the child, as a terminal gives it: a test run
  # started in the background (a CI job, `cmd &`) inherits it ignored, and a
  # program that finds SIGINT ignored rightly leaves it so.
  argv = ["run.py", "meta-train", *OPTS[:-1], "--steps", "100000", "--workdir", w]
  start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           f"sys.argv = {argv!r}; runpy.run_path('run.py', run_name='__main__')")
  p = subprocess.Popen([sys.executable, "-c", start], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
  lines = []
  while not (lines and "meta-train" in lines[-1] and "started" in lines[-1]):
    lines.append(p.stderr.readline())
    assert lines[-1], f"no progress line: {lines}"
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=240)
  assert p.returncode == 130, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert err.strip().splitlines()[-1] == "interrupted at step 1; --resume continues"
  assert Checkpoints(w).steps() == [1] and not os.path.exists(os.path.join(w, "results.json"))
  assert cli.main(["meta-train", *OPTS, "--steps", "2", "--workdir", w, "--resume"]) == 0
  _same_run(straight, w)
