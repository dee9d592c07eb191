"""Kill `meta-train` with SIGKILL at seeded random points, resume, compare.

    python -m maml_jax.tools.kill_campaign [--kills 10] [--seed 0] [--work DIR] [--keep-best 1]

One uninterrupted run of a small SYNTHETIC configuration gives the reference.
Then, for each kill: a fresh workdir, `meta-train` started in a subprocess and
killed with SIGKILL at a seeded random step: a random fraction of a second
after that step's log line, or (every other kill) the moment the best
checkpoint of a step where the reference saved one, not a checkpoint step,
exists and no latest checkpoint covers it yet (the window in which a kill
used to leave a workdir every later run refused), then
`meta-train --resume` until it finishes.  The resumed end state must equal the
reference bit for bit: the latest and best parameters, the best step,
metrics.jsonl (steps without duplicates, every value but the timings) and the
meta-test accuracy; with `--keep-best K` also the kept best checkpoints,
best.json and the final top-K ensemble.  A workdir whose resume fails is
counted unusable.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# val every step, latest checkpoint every 5: a best checkpoint is ahead of the
# latest one for most of the run.
CHECKPOINT_EVERY = 5
ARGS = ["meta-train", "--preset", "tiny", "--steps", "20", "--val-every", "1", "--checkpoint-every",
        str(CHECKPOINT_EVERY), "--log-every", "1", "--no-progress"]


def _cmd(workdir, resume=False, keep_best=1):
  return [sys.executable, os.path.join(ROOT, "run.py"), *ARGS, "--workdir", workdir, "--keep-best", str(keep_best),
          "--test-ensemble", str(keep_best)] + (["--resume"] if resume else [])


def _steps(folder):
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def _logged(workdir) -> int:
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return sum(1 for _ in f)
  except OSError:
    return 0


def in_window(workdir) -> bool:
  """A best checkpoint newer than every latest checkpoint."""
  best, latest = _steps(os.path.join(workdir, "best")), _steps(os.path.join(workdir, "checkpoints"))
  return bool(best) and (not latest or best[-1] > latest[-1])


def end_state(workdir) -> dict:
  """What a finished run leaves: parameters, best step, metrics without timings, results."""
  from maml_jax.checkpoints import load_trained
  import jax
  latest, best = load_trained(workdir, "latest"), load_trained(workdir, "best")
  metrics = [{k: v for k, v in json.loads(l).items() if k != "train_seconds"}
             for l in open(os.path.join(workdir, "metrics.jsonl"))]
  results = json.load(open(os.path.join(workdir, "results.json")))
  return {"latest": [np.asarray(x) for x in jax.tree.leaves(latest.meta_params)], "latest_step": latest.step,
          "best": [np.asarray(x) for x in jax.tree.leaves(best.meta_params)], "best_step": best.step,
          "metrics": metrics, "test_accuracy": results["test_accuracy"],
          "kept": _steps(os.path.join(workdir, "best")),
          "best_json": json.load(open(os.path.join(workdir, "best.json"))),
          "ensemble_steps": results.get("ensemble_steps")}


def same(a, b) -> list[str]:
  """The parts of two end states that differ."""
  bad = [k for k in ("latest_step", "best_step", "metrics", "test_accuracy", "kept", "best_json", "ensemble_steps")
         if a[k] != b[k]]
  bad += [k for k in ("latest", "best") if len(a[k]) != len(b[k]) or
          not all(np.array_equal(x, y) for x, y in zip(a[k], b[k]))]
  return bad


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--kills", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--work", default="", help="scratch folder (default: a new temporary one, removed at the end)")
  p.add_argument("--keep-best", type=int, default=1, help="best checkpoints the run keeps, and the size of its "
                 "final meta-test ensemble")
  a = p.parse_args(argv)
  work = a.work or tempfile.mkdtemp(prefix="kill_campaign_")
  os.makedirs(work, exist_ok=True)
  env = dict(os.environ, MAML_JAX_CACHE=os.path.join(work, "cache"))
  rng = np.random.default_rng(a.seed)
  t0 = time.time()
  ref_dir = os.path.join(work, "reference")
  shutil.rmtree(ref_dir, ignore_errors=True)
  subprocess.run(_cmd(ref_dir, keep_best=a.keep_best), env=env, check=True, capture_output=True)
  duration = time.time() - t0
  ref = end_state(ref_dir)
  from maml_jax.checkpoints import top_records
  window_steps = []   # the steps that entered the top K at their validation, not at a checkpoint step
  for i, line in enumerate(ref["metrics"]):
    if line["step"] in [r["step"] for r in top_records(ref["metrics"][:i + 1], a.keep_best)]:
      if line["step"] % CHECKPOINT_EVERY:
        window_steps.append(line["step"])
  print(f"reference run: {duration:.1f} s, best step {ref['best_step']}, {len(ref['metrics'])} metric lines, "
        f"best checkpoints ahead of the latest after steps {window_steps}", flush=True)
  rows, identical, unusable, window_kills = [], 0, 0, 0
  for k in range(a.kills):
    w = os.path.join(work, f"kill{k}")
    shutil.rmtree(w, ignore_errors=True)
    # A random step; "random": a random fraction of a second after that step's
    # log line; "window": as soon as a best checkpoint at or after it is ahead of
    # every latest checkpoint.
    target = "window" if k % 2 else "random"
    at_step, extra = int(rng.integers(1, 20)), float(rng.uniform(0.0, 0.5))
    if target == "window":   # one of the steps where the reference saved a best checkpoint ahead of the latest
      at_step = int(rng.choice(window_steps))
    proc = subprocess.Popen(_cmd(w, keep_best=a.keep_best), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    hit, logged_at = False, None
    while proc.poll() is None:
      if target == "random":
        if logged_at is None and _logged(w) >= at_step:
          logged_at = time.time()
        ready = logged_at is not None and time.time() - logged_at >= extra
      else:
        ready = in_window(w) and at_step in _steps(os.path.join(w, "best"))
      if ready:
        proc.send_signal(signal.SIGKILL)
        hit = True
        break
      time.sleep(0.01)
    proc.wait()
    state = f"best {_steps(os.path.join(w, 'best'))} latest {_steps(os.path.join(w, 'checkpoints'))}"
    window = in_window(w)
    window_kills += hit and window
    r = subprocess.run(_cmd(w, resume=True, keep_best=a.keep_best), env=env, capture_output=True, text=True)
    if r.returncode != 0:
      unusable += 1
      verdict = "UNUSABLE: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    else:
      diff = same(ref, end_state(w))
      identical += not diff
      verdict = "bit-identical" if not diff else f"DIFFERS in {diff}"
    line = (f"kill {k}: {target:6s} (step {at_step:2d}) {'killed' if hit else 'finished first'} with {state}"
            f"{' (best-saved/latest-not-saved window)' if window else ''}; resume: {verdict}")
    rows.append(line)
    print(line, flush=True)
  print(f"\nkills tried: {a.kills}; landed: {sum('killed' in r for r in rows)}; in the best-saved/latest-not-saved "
        f"window: {window_kills}; resumed bit-identical: {identical}; unusable workdirs: {unusable}; "
        f"{time.time() - t0:.0f} s")
  if not a.work:
    shutil.rmtree(work, ignore_errors=True)
  return 0 if identical == a.kills and unusable == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
