"""`run.py bench CONFIG`: seconds per second-order meta-train step on random data."""
import argparse
import json
import subprocess
import sys

from maml_jax.config import PRECISIONS

HELP = "time meta-train steps of a benchmark workload (paper, paper-lite, omniglot)"


def add_parser(sub):
  from maml_jax.bench import WORKLOADS
  p = sub.add_parser("bench", help=HELP, description=HELP + " on random data; prints "
                     "'config=NAME sec_per_meta_batch=S' (median after compilation).")
  p.add_argument("config", choices=sorted(WORKLOADS))
  p.add_argument("--repeats", type=int, default=3, help="timed steps after the compiling one")
  p.add_argument("--inner-steps", type=int, default=None, help="override the workload's inner steps")
  p.add_argument("--remat", action=argparse.BooleanOptionalAction, default=None,
                 help="recompute inner steps in the backward pass (default: the workload's)")
  p.add_argument("--task-map", choices=("auto", "vmap", "map"), default=None)
  p.add_argument("--conv-impl", choices=("auto", "gemm", "xla"), default=None)
  p.add_argument("--precision", choices=PRECISIONS, default=None,
                 help="compute precision (default: the workload's, float32)")
  p.add_argument("--memory", action="store_true",
                 help="peak resident memory for 1, 5 and 10 inner steps with and without remat "
                      "(each in its own process)")
  p.set_defaults(func=main)


def main(args) -> int:
  if args.memory:
    return _memory_table(args)
  from maml_jax.bench import WORKLOADS, peak_rss_mib, time_steps
  cfg = WORKLOADS[args.config]
  over = {k: v for k, v in dict(inner_steps=args.inner_steps, task_map=args.task_map,
                                conv_impl=args.conv_impl, precision=args.precision).items() if v is not None}
  if args.remat is not None:
    over["remat"] = args.remat
  cfg = cfg.replace(**over)
  sec, times, first = time_steps(cfg, args.repeats)
  print(f"config={args.config} sec_per_meta_batch={sec:.4f} inner_steps={cfg.inner_steps} remat={cfg.remat} "
        f"task_map={cfg.task_map} conv_impl={cfg.conv_impl} precision={cfg.precision} "
        f"steps={[round(t, 3) for t in times]} compile_and_first_step={first:.1f}s peak_rss_mib={peak_rss_mib():.0f}")
  return 0


def _memory_table(args) -> int:
  rows = []
  for remat in (False, True):
    for steps in (1, 5, 10):
      cmd = [sys.executable, sys.argv[0], "bench", args.config, "--repeats", "1", "--inner-steps", str(steps)]
      run = subprocess.run(cmd + (["--remat"] if remat else ["--no-remat"]), capture_output=True, text=True)
      if run.returncode != 0:
        why = "out of memory" if "RESOURCE_EXHAUSTED" in run.stderr else run.stderr.strip().splitlines()[-1:]
        rows.append({"inner_steps": steps, "remat": remat, "failed": str(why)})
        print(f"config={args.config} inner_steps={steps} remat={remat} failed: {why}", flush=True)
        continue
      kv = dict(t.split("=", 1) for t in run.stdout.split() if "=" in t)
      rows.append({"inner_steps": steps, "remat": remat, "peak_rss_mib": float(kv["peak_rss_mib"]),
                   "sec_per_meta_batch": float(kv["sec_per_meta_batch"])})
      print(f"config={args.config} inner_steps={steps} remat={remat} peak_rss_mib={kv['peak_rss_mib']} "
            f"sec_per_meta_batch={kv['sec_per_meta_batch']}", flush=True)
  print(json.dumps(rows))
  return 0
