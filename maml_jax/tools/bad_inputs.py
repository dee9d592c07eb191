"""Runs the command line on a list of bad inputs and tabulates what a user sees.

    python -m maml_jax.tools.bad_inputs [--work DIR] [--only NAME,...]

Each probe writes one damaged input (a typo'd option, a malformed CSV, a
decompression-bomb PNG header, a truncated saved model, a manifest naming a
file outside its folder, ...) into a scratch folder, runs `run.py` on it in a
subprocess, and records the exit status, the last line of stderr and whether a
traceback appeared.  Every probe should end with exit 2 and one `error: ...`
line, and leave no output behind.  The base inputs (a SYNTHETIC SMI image set,
its shards, a tiny meta-trained run and a model saved by `adapt --save`) are
built once in --work and reused.  Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args, cwd, env=None, timeout=900):
  p = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=cwd, capture_output=True,
                     text=True, timeout=timeout, env=env)
  return p.returncode, p.stdout, p.stderr


def build_base(work: str, env) -> None:
  """SYNTHETIC SMI images + CSVs, their shards, a tiny 5-way run, a saved model."""
  steps = [("imgs", ["make-smi-demo", "--out", "demo", "--images", "imgs", "--limit", "40"]),
           ("shards", ["prepare-smi", "--images", "imgs", "--labels", "imgs/labels.csv", "--rois",
                       "imgs/rois.csv", "--out", "shards", "--stages", "5"]),
           ("run/results.json", ["meta-train", "--preset", "tiny", "--ways", "5", "--image-size", "16",
                                 "--workdir", "run", "--no-progress"]),
           ("model", ["adapt", "--workdir", "run", "--data", "demo", "--shots", "5", "--trials", "1",
                      "--save", "model", "--out", "adaptout"])]
  for done, args in steps:
    if not os.path.exists(os.path.join(work, done)):
      rc, out, err = run(args, work, env)
      if rc:
        raise SystemExit(f"building the base inputs failed: run.py {' '.join(args)}\n{err}")


def png_header(width: int, height: int) -> bytes:
  """A valid PNG signature and IHDR claiming width x height, with one tiny IDAT."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _copy(src, dst):
  shutil.copytree(src, dst) if os.path.isdir(src) else shutil.copy(src, dst)
  return dst


def _edit_json(path, fn):
  with open(path) as f:
    obj = json.load(f)
  obj = fn(obj)
  with open(path, "w") as f:
    json.dump(obj, f)


def _edit_npz(path, fn):
  with np.load(path) as z:
    d = {k: z[k] for k in z.files}
  d = fn(d)
  np.savez(path, **d)


def probes(work: str, scratch: str):
  """(name, args, setup) triples; `setup(folder)` damages a copy of an input."""
  imgs, labels, rois = os.path.join(work, "imgs"), os.path.join(work, "imgs/labels.csv"), \
      os.path.join(work, "imgs/rois.csv")
  W = os.path.join(scratch, "w")      # a workdir that must stay absent
  tiny = ["meta-train", "--preset", "tiny", "--no-progress", "--workdir", W]

  def prep(labels_csv=labels, rois_csv=rois, images=imgs):
    return ["prepare-smi", "--images", images, "--labels", labels_csv, "--rois", rois_csv, "--out",
            os.path.join(scratch, "out"), "--stages", "5"]

  def csv_with(src, edit):
    def setup(d):
      with open(src) as f:
        lines = f.read().splitlines()
      with open(os.path.join(d, "x.csv"), "w") as f:
        f.write("\n".join(edit(lines)) + "\n")
    return setup

  def first_stage(v):
    def edit(lines):
      head = lines[0].split(",")
      i = head.index("stage")
      row = lines[1].split(",")
      row[i] = v
      return [lines[0], ",".join(row)] + lines[2:]
    return edit

  def roi_x(v):
    def edit(lines):
      head = lines[0].split(",")
      i = [j for j, h in enumerate(head) if h.endswith("x")][0]
      row = lines[1].split(",")
      row[i] = v
      return [lines[0], ",".join(row)] + lines[2:]
    return edit

  def bomb(d):
    os.makedirs(os.path.join(d, "imgs"))
    for n in os.listdir(imgs):
      _copy(os.path.join(imgs, n), os.path.join(d, "imgs", n))
    victim = sorted(n for n in os.listdir(imgs) if n.endswith(".png"))[0]
    with open(os.path.join(d, "imgs", victim), "wb") as f:
      f.write(png_header(60000, 60000))

  def shards_with(fn):
    def setup(d):
      _copy(os.path.join(work, "shards"), os.path.join(d, "s"))
      fn(os.path.join(d, "s"))
    return setup

  def manifest(fn):
    return shards_with(lambda s: _edit_json(os.path.join(s, "manifest.json"), fn))

  def shard0(m, **kw):
    m["shards"][0].update(kw)
    return m

  def model_with(fn):
    def setup(d):
      _copy(os.path.join(work, "model"), os.path.join(d, "m"))
      fn(os.path.join(d, "m"))
    return setup

  def truncate(path, keep=0.5):
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[:int(len(data) * keep)])

  def drop_leaf(d):
    def fn(p):
      del p[sorted(p)[0]]
      return p
    _edit_npz(os.path.join(d, "params.npz"), fn)

  def nan_params(d):
    _edit_npz(os.path.join(d, "params.npz"), lambda p: {k: np.full_like(v, np.nan) for k, v in p.items()})

  def wrong_shape(d):
    def fn(p):
      k = sorted(p)[0]
      p[k] = np.zeros(p[k].shape + (2,), p[k].dtype)
      return p
    _edit_npz(os.path.join(d, "params.npz"), fn)

  adapt = lambda data: ["adapt", "--workdir", os.path.join(work, "run"), "--data", data, "--shots", "5",
                        "--trials", "1", "--out", os.path.join(scratch, "out")]
  predict = lambda model: ["predict", "--model", model, "--image", os.path.join(imgs, sorted(
      n for n in os.listdir(imgs) if n.endswith(".png"))[0]), "--rois", rois]
  X = lambda d: os.path.join(d, "x.csv")

  def user_file(d):
    with open(os.path.join(d, "F"), "w") as f:
      f.write("a user's file\n")

  def user_folder(d):
    os.makedirs(os.path.join(d, "d"))
    user_file(os.path.join(d, "d"))

  def two_classes(d):
    from PIL import Image
    for c in "ab":
      os.makedirs(os.path.join(d, "two", c))
      for i in range(3):
        Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(os.path.join(d, "two", c, f"{i}.png"))

  def noise_set(d):
    from PIL import Image
    os.makedirs(os.path.join(d, "noise"))
    noise = (np.random.default_rng(0).random((512, 512)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(os.path.join(d, "noise", "n.png"))
    with open(os.path.join(d, "noise", "labels.csv"), "w") as f:
      f.write("image_id,stage\nn,1\n")

  run_args = lambda cmd, *a: [cmd, "--workdir", os.path.join(work, "run"), *a]
  prep_to = lambda out: ["prepare-smi", "--images", imgs, "--labels", labels, "--rois", rois, "--out", out,
                         "--stages", "5"]
  prep_noise = ["prepare-smi", "--images", "@/noise", "--labels", "@/noise/labels.csv", "--out", "@/o"]
  out = [
      ("--model conv5", tiny + ["--model", "conv5"], None),
      ("--dataset cifar10", tiny + ["--dataset", "cifar10"], None),
      ("--log-every 0", tiny + ["--log-every", "0"], None),
      ("--checkpoint-every 0", tiny + ["--checkpoint-every", "0"], None),
      ("--keep-checkpoints 0", tiny + ["--keep-checkpoints", "0"], None),
      ("--steps -3", tiny + ["--steps", "-3"], None),
      ("--image-size 0", tiny + ["--image-size", "0"], None),
      ("--meta-lr nan", tiny + ["--meta-lr", "nan"], None),
      ("--shots 0", tiny + ["--shots", "0"], None),
      ("--data-dir missing (Omniglot)", ["meta-train", "--no-progress", "--workdir", W, "--steps", "1",
                                         "--data-dir", os.path.join(scratch, "nothing")], None),
      ("evaluate: no run in workdir", ["evaluate", "--workdir", W, "--no-progress"], None),
      ("labels CSV: row with an extra field", None, csv_with(labels, lambda l: [l[0], l[1] + ",extra"] + l[2:])),
      ("labels CSV: stage nan", None, csv_with(labels, first_stage("nan"))),
      ("labels CSV: stage inf", None, csv_with(labels, first_stage("inf"))),
      ("ROI CSV: centre x = inf", None, csv_with(rois, roi_x("inf"))),
      ("ROI CSV: centre x = -5 (outside)", None, csv_with(rois, roi_x("-5"))),
      ("PNG: decompression-bomb header (60000x60000)", None, bomb),
      ("manifest: entry ../../outside.npz", adapt, manifest(lambda m: shard0(m, file="../../outside.npz"))),
      ("manifest: absolute entry /etc/passwd", adapt, manifest(lambda m: shard0(m, file="/etc/passwd"))),
      ("manifest: entry is a number", adapt, manifest(lambda m: dict(m, shards=[1]))),
      ("manifest: entry without 'file'", adapt, manifest(lambda m: dict(m, shards=[{"sha256": "0"}]))),
      ("manifest: 'shards' is a string", adapt, manifest(lambda m: dict(m, shards="shard-00000.npz"))),
      ("manifest: JSON list", adapt, manifest(lambda m: [m])),
      ("manifest: counts not a list", adapt, manifest(lambda m: dict(m, counts=7))),
      ("manifest: num_images a string", adapt, manifest(lambda m: shard0(m, num_images="many"))),
      ("shard: truncated npz", adapt, shards_with(lambda s: truncate(os.path.join(s, "shard-00000.npz")))),
      ("saved model: truncated params.npz", predict, model_with(lambda m: truncate(os.path.join(m, "params.npz")))),
      ("saved model: model.json a JSON list", predict,
       model_with(lambda m: _edit_json(os.path.join(m, "model.json"), lambda j: [j]))),
      ("saved model: model.json lacks 'roi_names'", predict,
       model_with(lambda m: _edit_json(os.path.join(m, "model.json"), lambda j: {k: v for k, v in j.items()
                                                                               if k != "roi_names"}))),
      ("saved model: model.json 'weights' wrong length", predict,
       model_with(lambda m: _edit_json(os.path.join(m, "model.json"), lambda j: dict(j, weights=[1.0])))),
      ("saved model: a parameter leaf missing", predict, model_with(drop_leaf)),
      ("saved model: a parameter of the wrong shape", predict, model_with(wrong_shape)),
      ("saved model: NaN parameters", predict, model_with(nan_params)),
      ("saved model: support.npz missing", predict, model_with(lambda m: os.remove(os.path.join(m, "support.npz")))),
      # Outputs: a user's file is never replaced, an unwritable path is named.
      ("meta-train --workdir is a file", tiny[:-1] + ["@/F"], user_file),
      ("meta-train --workdir under a file", tiny[:-1] + ["@/F/sub"], user_file),
      ("meta-train --workdir read-only", tiny[:-1] + ["/sys/maml_jax_probe"], None),
      ("meta-train --workdir holds other files", tiny[:-1] + ["@/d"], user_folder),
      ("adapt --out is a file", run_args("adapt", "--data", os.path.join(work, "shards"), "--out", "@/F"), user_file),
      ("adapt --save is a non-empty folder", run_args("adapt", "--data", os.path.join(work, "shards"), "--save",
                                                      "@/d"), user_folder),
      ("prepare-smi --out is a file", prep_to("@/F"), user_file),
      ("prepare-smi --preview is a file", prep_to("@/o") + ["--preview", "@/F"], user_file),
      ("classify --out is a file", run_args("classify", "--support", imgs, "--query", imgs, "--out", "@/F"),
       user_file),
      ("experiment --out is a file", ["experiment", "--table", "3", "--out", "@/F"], user_file),
      ("experiment --out read-only", ["experiment", "--table", "3", "--out", "/sys/maml_jax_probe"], None),
      ("predict --csv exists", predict(os.path.join(work, "model")) + ["--csv", "@/F"], user_file),
      ("predict --csv under a file", predict(os.path.join(work, "model")) + ["--csv", "@/F/p.csv"], user_file),
      # Settings that could not work.
      ("--image-size 100000", tiny + ["--image-size", "100000"], None),
      ("--outer-mask zzzz (matches nothing)", tiny + ["--outer-mask", "zzzz"], None),
      ("--dataset folder with fewer classes than ways", tiny + ["--dataset", "folder", "--image-folder", "@/two"],
       two_classes),
      ("adapt --steps -1", run_args("adapt", "--data", os.path.join(work, "shards"), "--steps", "-1"), None),
      ("experiment --vgg16-weights neither format", ["experiment", "--table", "3", "--out", "@/x",
                                                     "--vgg16-weights", "@/F"], user_file),
      # Not a hand.
      ("prepare-smi: a uniform-noise PNG", prep_noise, noise_set),
      ("predict --image uniform noise (a model of SYNTHETIC ROIs)", ["predict", "--model", os.path.join(work, "model"), "--image",
                                         "@/noise/n.png"], noise_set),
  ]
  fixed = []
  for name, args, setup in out:
    if args is None:      # a CSV or image probe of prepare-smi
      if "ROI CSV" in name:
        args = lambda d: prep(rois_csv=X(d))
      elif "PNG" in name:
        args = lambda d: prep(images=os.path.join(d, "imgs"))
      else:
        args = lambda d: prep(labels_csv=X(d))
    elif callable(args) and args in (adapt, predict):
      a = args
      args = (lambda a: lambda d: a(os.path.join(d, "s")))(a) if a is adapt else \
          (lambda a: lambda d: a(os.path.join(d, "m")))(a)
    fixed.append((name, args, setup))
  return fixed


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "maml_jax_bad_inputs"),
                 help="where the base inputs are built (reused when present)")
  p.add_argument("--only", default="", help="comma-separated substrings of probe names to run")
  a = p.parse_args(argv)
  os.makedirs(a.work, exist_ok=True)
  env = dict(os.environ, MAML_JAX_CACHE=os.path.join(a.work, "cache"))
  build_base(a.work, env)
  print("| input | command | exit | message | traceback | left behind |\n|---|---|---|---|---|---|")
  bad = 0
  for name, args, setup in probes(a.work, "@"):
    if a.only and not any(s in name for s in a.only.split(",")):
      continue
    scratch = tempfile.mkdtemp(prefix="probe-", dir=a.work)
    if setup:
      setup(scratch)
    before = set(os.listdir(scratch))
    real = [x.replace("@", scratch) for x in (args(scratch) if callable(args) else args)]
    rc, out, err = run(real, scratch, env)
    left = sorted(set(os.listdir(scratch)) - before)
    user = os.path.join(scratch, "F")
    if "F" in before and not (os.path.isfile(user) and open(user).read() == "a user's file\n"):
      left.append("F REPLACED")
    tb = "Traceback" in err
    msg = (err.strip().splitlines() or [""])[-1].replace("|", "\\|").replace(scratch, "<tmp>").replace(a.work, "<work>")
    shown = " ".join(x.replace(scratch, "<tmp>").replace(a.work, "<work>") for x in real)
    bad += rc != 2 or tb or bool(left)
    print(f"| {name} | `run.py {shown}` | {rc} | {msg[:300]} | {'yes' if tb else 'no'} | "
          f"{', '.join(left) or 'nothing'} |", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
  print(f"\n{bad} probe(s) without a clean `error:` exit 2")
  if not a.only or "diverg" in a.only:
    bad += outcomes(a.work, env)
  return 1 if bad else 0


# Runs that finish but must not look like a success: (name, meta-train options).
DIVERGING = [("--inner-lr 100", ["--inner-lr", "100"]), ("--meta-lr 50 --clip-norm 0", ["--meta-lr", "50",
                                                                                       "--clip-norm", "0"])]


def outcomes(work: str, env) -> int:
  """Diverging runs of the default preset cut to 60 steps: each must end (exit 0)
  with a `warning: training diverged` line last and `diverged: true` in results.json."""
  print("\n| diverging run | exit | last line | results.json diverged |\n|---|---|---|---|")
  bad = 0
  for name, extra in DIVERGING:
    scratch = tempfile.mkdtemp(prefix="probe-", dir=work)
    rc, out, err = run(["meta-train", "--steps", "60", "--val-every", "10", "--checkpoint-every", "20",
                        "--val-episodes", "16", "--test-episodes", "16", "--no-progress", "--workdir",
                        os.path.join(scratch, "w"), *extra], scratch, env)
    last = (out.strip().splitlines() or [""])[-1]
    res = os.path.join(scratch, "w", "results.json")
    diverged = json.load(open(res)).get("diverged") if os.path.exists(res) else None
    bad += rc != 0 or not last.startswith("warning: training diverged") or diverged is not True
    print(f"| `meta-train ... {name}` | {rc} | {last[:160]} | {diverged} |", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
  return bad


if __name__ == "__main__":
  sys.exit(main())
