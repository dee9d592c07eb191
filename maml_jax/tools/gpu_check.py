"""The GPU check: this project's figures on one GPU, in a fixed slot, with no network.

    python -m maml_jax.tools.gpu_check OUT [--peer PATH] [--minutes 9.5] [--quick]

Runs where JAX (with CUDA), Flax, Optax, Orbax and PyTorch are installed;
needs neither tensorflow-datasets nor a network (Omniglot is embedded; the
benchmarks use random data).  Each step is a `run.py` command in its own
process (so this process never holds the GPU), with a timeout from what is
left of `--minutes`; a step with too little time left is skipped and says so.
Writes three files to OUT, after every step, so a cut-off check still leaves
its figures:

    OUT/figures.json   every figure, by step
    OUT/summary.txt    the same as lines of text
    OUT/log.txt        each command and its output

Steps: the platform (JAX, device, XLA_FLAGS, PyTorch); `run.py bench omniglot`
and `bench paper`; the PyTorch peers on the same workloads (`peer_torch.py`
CONFIG vmap|loop) and the ratios; the default `meta-train`, with a time
budget; `meta-train --preset omniglot-5w1s` cut by a time budget, then
`evaluate` of its best checkpoint; with time left, `bench omniglot` without
the GPU defaults (XLA command buffers) and with `--precision bfloat16`.

`peer_torch.py` is not part of this repository: pass `--peer PATH`, or copy
it into the checkout's root first (`cp ../shared/bench/peer_torch.py .`),
where it is found.  Without it (or without PyTorch) the peer steps are
skipped.  `--quick` shrinks every step (a CPU dry run of the script itself:
its figures mean nothing).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_PLACES = ("peer_torch.py", "shared/bench/peer_torch.py", "../shared/bench/peer_torch.py")

PROBE = """
import json, sys
from maml_jax.gpu_defaults import apply_gpu_defaults
added = apply_gpu_defaults()
import os, jax
d = jax.devices()[0]
print("PROBE " + json.dumps({"jax": jax.__version__, "backend": jax.default_backend(),
      "device": getattr(d, "device_kind", str(d)), "devices": jax.device_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "gpu_defaults_added": added, "python": sys.version.split()[0]}))
"""


def _plan(quick: bool) -> dict:
  """Each step's arguments and its longest run in seconds (quick: a CPU dry run)."""
  if quick:
    return {"bench": [("omniglot", ["--repeats", "1"], 300)],
            "peer_steps": "2",
            "default": (["--time-budget", "0.5", "--test-episodes", "20"], 240),
            "preset": (["--preset", "omniglot-5w1s", "--tasks", "4", "--time-budget", "0.5"], 240),
            "evaluate": (["--episodes", "20"], 180),
            "extra": [("omniglot", ["--repeats", "1", "--precision", "bfloat16"], 300)]}
  return {"bench": [("omniglot", ["--repeats", "20"], 150), ("paper", ["--repeats", "5"], 240)],
          "peer_steps": "20",
          # The default took 78 s of wall on an H200 (meta-test included); 3 min leaves room.
          "default": (["--time-budget", "3"], 300),
          "preset": (["--preset", "omniglot-5w1s", "--time-budget", "2"], 200),
          "evaluate": ([], 120),
          "extra": [("omniglot", ["--repeats", "20", "--precision", "bfloat16"], 120),
                    ("omniglot", ["--repeats", "20"], 120, {"MAML_JAX_GPU_DEFAULTS": "0"})]}


class Check:
  """Runs the steps against a deadline and keeps OUT's three files current."""

  def __init__(self, out: str, minutes: float):
    self.out, self.deadline = out, time.monotonic() + 60 * minutes
    self.figures: dict = {}
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "log.txt"), "w").close()

  def run(self, name: str, cmd: list[str], longest: float, env: dict | None = None) -> str | None:
    """The command's output, or None (skipped, timed out or failed: recorded under `name`)."""
    left = self.deadline - time.monotonic() - 5
    if left < min(longest, 30):
      self.record(name, {"skipped": f"{left:.0f} s left"})
      return None
    t0 = time.monotonic()
    try:
      p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=min(longest, left))
      out, status = p.stdout, p.returncode
    except subprocess.TimeoutExpired as e:
      out, status = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    wall = time.monotonic() - t0
    with open(os.path.join(self.out, "log.txt"), "a") as f:
      f.write(f"$ {' '.join(cmd)}   # {name}: exit {status}, {wall:.1f} s\n{out}\n")
    if status != 0:
      tail = out.strip().splitlines()[-1:] or [""]
      self.record(name, {"failed": f"exit {status}", "last_line": tail[0], "wall_s": round(wall, 1)})
      return None
    self.figures.setdefault(name, {})["wall_s"] = round(wall, 1)
    return out

  def record(self, name: str, values: dict) -> None:
    self.figures.setdefault(name, {}).update(values)
    with open(os.path.join(self.out, "figures.json"), "w") as f:
      json.dump(self.figures, f, indent=1)
    with open(os.path.join(self.out, "summary.txt"), "w") as f:
      for step, vals in self.figures.items():
        f.write(f"{step}: " + ", ".join(f"{k}={v}" for k, v in vals.items()) + "\n")


def _value(pattern: str, text: str | None):
  m = re.search(pattern, text or "")
  return float(m.group(1)) if m else None


def _find_peer(given: str | None) -> str | None:
  if given:
    return os.path.abspath(given) if os.path.isfile(given) else None
  found = [os.path.normpath(os.path.join(ROOT, p)) for p in PEER_PLACES]
  return next((p for p in found if os.path.isfile(p)), None)


def _meta_test(check: Check, name: str, out: str | None) -> None:
  acc = re.search(r"accuracy[^:]*: ([0-9.]+) \+- ([0-9.]+)%", out or "")
  cut = re.search(r"time budget of (\S+) min spent at step (\d+) of (\d+)", out or "")
  vals = {}
  if acc:
    vals.update(meta_test_percent=float(acc.group(1)), ci95=float(acc.group(2)))
  if cut:
    vals.update(cut_at_step=int(cut.group(2)), of_steps=int(cut.group(3)))
  trained = _value(r"training took (\d+) s", out)
  if trained is not None:
    vals["train_s"] = trained
  if vals:
    check.record(name, vals)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("out", help="folder for figures.json, summary.txt, log.txt")
  ap.add_argument("--peer", help="peer_torch.py (default: found in the checkout's root or shared/bench/)")
  ap.add_argument("--minutes", type=float, default=9.5, help="the whole check's wall-clock budget")
  ap.add_argument("--quick", action="store_true", help="tiny steps: a dry run of the script on a CPU")
  ap.add_argument("--workdirs", help="where the meta-train runs go (default: a temporary folder)")
  a = ap.parse_args(argv)
  if a.minutes <= 0:
    ap.error(f"--minutes {a.minutes} must be > 0")
  check, plan = Check(a.out, a.minutes), _plan(a.quick)
  work = a.workdirs or tempfile.mkdtemp(prefix="gpu_check_")
  run_py = [sys.executable, os.path.join(ROOT, "run.py")]

  out = check.run("platform", [sys.executable, "-c", PROBE], 120)
  if out and "PROBE " in out:
    check.record("platform", json.loads(out.split("PROBE ", 1)[1].splitlines()[0]))
  torch_ok = importlib.util.find_spec("torch") is not None
  peer = _find_peer(a.peer)
  check.record("platform", {"torch": "present" if torch_ok else "absent", "peer": peer or "not found"})

  for config, args, longest in plan["bench"]:
    out = check.run(f"bench {config}", run_py + ["bench", config] + args, longest)
    ours = _value(r"sec_per_meta_batch=([0-9.]+)", out)
    if ours is None:
      continue
    check.record(f"bench {config}", {"ms_per_meta_batch": round(1e3 * ours, 2)})
    for mode in ("vmap", "loop"):
      if not (peer and torch_ok):
        continue
      name = f"peer torch-{mode} {config}"
      theirs = _value(r"sec_per_meta_batch=([0-9.]+)",
                      check.run(name, [sys.executable, peer, config, mode, "--steps", plan["peer_steps"]], 120))
      if theirs is not None:
        check.record(name, {"ms_per_meta_batch": round(1e3 * theirs, 2), "ratio_ours_to_peer": round(ours / theirs, 3)})

  args, longest = plan["default"]
  _meta_test(check, "meta-train default",
             check.run("meta-train default", run_py + ["meta-train", "--no-progress", "--workdir",
                                                       os.path.join(work, "default")] + args, longest))
  args, longest = plan["preset"]
  cut = os.path.join(work, "preset")
  _meta_test(check, "meta-train preset cut",
             check.run("meta-train preset cut", run_py + ["meta-train", "--no-progress", "--workdir", cut] + args,
                       longest))
  check.record("meta-train preset cut", {"args": " ".join(args)})
  if os.path.isdir(os.path.join(cut, "checkpoints")):
    which = "best" if os.path.exists(os.path.join(cut, "best.json")) else "latest"
    args, longest = plan["evaluate"]
    _meta_test(check, f"evaluate preset cut ({which})",
               check.run(f"evaluate preset cut ({which})", run_py + ["evaluate", "--no-progress", "--workdir", cut,
                                                                     "--checkpoint", which] + args, longest))

  for config, args, longest, *env in plan["extra"]:
    name = f"bench {config} {' '.join(args)}" + (" " + " ".join(f"{k}={v}" for k, v in env[0].items()) if env else "")
    ours = _value(r"sec_per_meta_batch=([0-9.]+)", check.run(name, run_py + ["bench", config] + args, longest,
                                                               env[0] if env else None))
    if ours is not None:
      check.record(name, {"ms_per_meta_batch": round(1e3 * ours, 2)})
  print(open(os.path.join(a.out, "summary.txt")).read(), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
