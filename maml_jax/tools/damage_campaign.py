"""Damage a finished run's newest checkpoints, resume, compare; flip bits, count detections.

    python -m maml_jax.tools.damage_campaign [--work DIR] [--flips 25] [--seed 0] [ARGS of meta-train ...]

One finished run (by default the `default` preset cut to 60 steps: validation
every 10, a checkpoint every 20, 16 episodes each, so `checkpoints/20,40,60`
and `best/60`) is the reference.  For each kind of damage, a copy of it has
its newest latest checkpoint and its best checkpoint damaged the same way:

    truncate   the largest data file cut to half
    flip64     64 bytes of the largest data file inverted
    manifest   `manifest.ocdbt` deleted
    data       the largest data file deleted
    metadata   `_METADATA` emptied

and `meta-train --resume` is run on it twice.  Each must exit 0, and the end
state must be the reference's: the best step and its parameters bit for bit,
the latest parameters, the meta-test accuracy, best.json.  Then `--flips`
single-bit flips, each at a seeded random byte of a seeded random file of a
fresh copy's newest checkpoint, must each be reported by the checksum check
(`checkpoints.check_checksums`) and refused by `load_trained`.  Prints a
Markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = ["meta-train", "--steps", "60", "--val-every", "10", "--checkpoint-every", "20", "--val-episodes", "16",
       "--test-episodes", "16", "--no-progress"]


def _largest(folder: str) -> str:
  files = [os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs if f != "checksums.json"]
  return max(files, key=os.path.getsize)


def _named(folder: str, name: str) -> str:
  return next(os.path.join(dp, name) for dp, _, fs in os.walk(folder) if name in fs)


def damage(folder: str, kind: str) -> None:
  """Damages the checkpoint folder `folder` in place (one of the kinds above)."""
  if kind == "truncate":
    p = _largest(folder)
    data = open(p, "rb").read()
    open(p, "wb").write(data[:len(data) // 2])
  elif kind == "flip64":
    p = _largest(folder)
    data = bytearray(open(p, "rb").read())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    open(p, "wb").write(bytes(data))
  elif kind == "manifest":
    os.remove(_named(folder, "manifest.ocdbt"))
  elif kind == "data":
    os.remove(_largest(folder))
  elif kind == "metadata":
    open(_named(folder, "_METADATA"), "w").close()
  else:
    raise ValueError(kind)


KINDS = ("truncate", "flip64", "manifest", "data", "metadata")


def _run(args, cwd):
  p = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=cwd, capture_output=True,
                     text=True)
  return p.returncode, p.stdout, p.stderr


def _last(text: str) -> str:
  lines = [l for l in text.strip().splitlines() if l.strip()]
  return lines[-1] if lines else ""


def _same_params(a, b) -> bool:
  import jax
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--work", default="", help="scratch folder (default: a temporary one, removed)")
  ap.add_argument("--flips", type=int, default=25)
  ap.add_argument("--seed", type=int, default=0)
  args, extra = ap.parse_known_args(argv)
  from maml_jax.checkpoints import CheckpointError, check_checksums, load_trained
  work = args.work or tempfile.mkdtemp(prefix="damage_campaign_")
  os.makedirs(work, exist_ok=True)
  ref = os.path.join(work, "ref")
  run_args = RUN + extra
  t0 = time.perf_counter()
  if not os.path.exists(os.path.join(ref, "results.json")):
    rc, out, err = _run(run_args + ["--workdir", ref], work)
    if rc:
      raise SystemExit(f"the reference run failed:\n{err}")
  best = json.load(open(os.path.join(ref, "best.json")))["step"]
  newest = max(int(s) for s in os.listdir(os.path.join(ref, "checkpoints")))
  ref_res = json.load(open(os.path.join(ref, "results.json")))
  ref_best, ref_latest = load_trained(ref, "best"), load_trained(ref, "latest")
  print(f"reference: best step {best}, newest checkpoint {newest}, meta-test "
        f"{100 * ref_res['test_accuracy']:.2f}%")
  print("\n| damage (checkpoints/{0}, best/{1}) | resume 1: exit, last line | resume 2: exit | best step | "
        "best = reference | latest = reference | meta-test = reference |".format(newest, best))
  print("|---|---|---|---|---|---|---|")
  failures = 0
  for kind in KINDS:
    w = os.path.join(work, kind)
    shutil.rmtree(w, ignore_errors=True)
    shutil.copytree(ref, w)
    damage(os.path.join(w, "checkpoints", str(newest)), kind)
    damage(os.path.join(w, "best", str(best)), kind)
    rc1, out1, err1 = _run(run_args + ["--workdir", w, "--resume"], work)
    rc2, out2, err2 = _run(run_args + ["--workdir", w, "--resume"], work)
    ok = rc1 == 0 and rc2 == 0 and "Traceback" not in err1 + err2
    same = [False, False, False]
    got_best = "-"
    if ok:
      b, l = load_trained(w, "best"), load_trained(w, "latest")
      res = json.load(open(os.path.join(w, "results.json")))
      got_best = b.step
      same = [b.step == ref_best.step and _same_params(b.meta_params, ref_best.meta_params),
              l.step == ref_latest.step and _same_params(l.meta_params, ref_latest.meta_params),
              res["test_accuracy"] == ref_res["test_accuracy"]]
    failures += not (ok and all(same))
    print(f"| {kind} | {rc1}, `{_last(out1 or err1)[:90]}` | {rc2} | {got_best} | "
          + " | ".join("yes" if x else "NO" for x in same) + " |")

  rng = np.random.default_rng(args.seed)
  detected = refused = 0
  for i in range(args.flips):
    w = os.path.join(work, "flip")
    shutil.rmtree(w, ignore_errors=True)
    shutil.copytree(ref, w)
    folder = os.path.join(w, "checkpoints", str(newest))
    files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs if f != "checksums.json")
    p = files[rng.integers(len(files))]
    data = bytearray(open(p, "rb").read())
    pos = int(rng.integers(len(data)))
    data[pos] ^= 1 << int(rng.integers(8))
    open(p, "wb").write(bytes(data))
    try:
      check_checksums(folder)
    except CheckpointError:
      detected += 1
    shutil.rmtree(os.path.join(w, "best"))   # so that load_trained("latest") can only read the flipped one
    with contextlib.redirect_stderr(io.StringIO()):   # its "skipped checkpoint" warning, once per flip
      try:
        t = load_trained(w, "latest")
        refused += t.step != newest
      except CheckpointError:
        refused += 1
  failures += detected != args.flips or refused != args.flips
  print(f"\nsingle-bit flips in checkpoints/{newest}: {args.flips}; detected by the checksums: {detected}; "
        f"skipped by load_trained: {refused}")
  print(f"{time.perf_counter() - t0:.0f} s; {'all as expected' if not failures else f'{failures} FAILED'}")
  if not args.work:
    shutil.rmtree(work, ignore_errors=True)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
