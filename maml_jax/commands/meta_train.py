"""`run.py meta-train`: meta-train a MAML initialisation, then evaluate it on unseen classes."""
import argparse
import sys

from maml_jax.config import add_config_args, config_from_args

HELP = "meta-train (default: Omniglot 5-way 1-shot, the `default` preset)"


def add_parser(sub):
  p = sub.add_parser("meta-train", help=HELP, description=HELP + ". Every setting below overrides the "
                     "preset's; checkpoints, metrics.jsonl and results.json go to --workdir. A spent "
                     "--time-budget (exit 0) or Ctrl-C (exit 130) stops at a step boundary with a checkpoint "
                     "and no results.json; --resume continues the run.",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--workdir", default="runs/default", help="where the run's files go")
  p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its latest checkpoint")
  p.add_argument("--no-progress", action="store_true", help="no progress output")
  p.add_argument("--data", metavar="SHARDS", help="SMI shards (from prepare-smi) for --preset xray: the X-ray "
                 "model, meta-trained on bone-age tasks of their patients (same as --data-dir)")
  p.add_argument("--distributed", action="store_true", help="one of several processes or hosts running this "
                 "command together (jax.distributed; coordinator from JAX_COORDINATOR_ADDRESS, "
                 "JAX_NUM_PROCESSES, JAX_PROCESS_ID, or detected on Slurm/MPI/TPU; those variables alone "
                 "turn it on too)")
  add_config_args(p)
  p.set_defaults(func=main)


# A Ctrl-C'd run exits as an interrupted program does (128 + SIGINT); a run
# whose time budget was spent exits 0, as planned (no results.json yet).
EXIT_INTERRUPTED = 130


def main(args) -> int:
  import os
  from maml_jax import io as files
  from maml_jax.checkpoints import IncompatibleRunError
  from maml_jax.distributed import maybe_initialize
  cfg = config_from_args(args)
  if args.data:
    cfg = cfg.replace(data_dir=args.data)
  if cfg.dataset == "smi":
    from maml_jax.smi import xray_model
    xray_model.register()
  files.check_output_dir(args.workdir, "--workdir", overwrite=True)
  if os.path.isdir(args.workdir) and os.listdir(args.workdir) and \
      not os.path.exists(os.path.join(args.workdir, "config.json")):
    raise IncompatibleRunError(f"--workdir {args.workdir}: the folder holds other files and no run (no "
                               f"config.json); use a new or empty folder")
  maybe_initialize(args.distributed)
  from maml_jax.stopping import INTERRUPTED
  from maml_jax.train import train_and_evaluate
  r = train_and_evaluate(cfg, args.workdir, resume=args.resume, progress=not args.no_progress,
                         catch_interrupt=True)
  if r.get("stopped") == INTERRUPTED:
    print(f"interrupted at step {r['step']}; --resume continues", file=sys.stderr)
    return EXIT_INTERRUPTED
  if r.get("stopped"):
    print(f"time budget of {cfg.time_budget:g} min spent at step {r['step']} of {r['steps']}; --resume continues")
    return 0
  tag = " [SYNTHETIC data]" if r["synthetic_data"] else ""
  which = r.get("ensemble") or f"checkpoint of step {r['checkpoint_step']}"
  print(f"meta-test {cfg.ways}-way {cfg.shots}-shot accuracy{tag}: {100 * r['test_accuracy']:.2f} "
        f"+- {100 * r['test_ci95']:.2f}% (95% CI, {r['test_episodes']} episodes, {cfg.eval_inner_steps} inner "
        f"steps, {which}); training took {r['train_seconds_this_run']:.0f} s; files in {args.workdir}")
  if cfg.dataset == "smi":
    split = xray_model.read_split(args.workdir)
    print(f"patients: {len(split['train_patients'])} train, {len(split['val_patients'])} validation, "
          f"{len(split['test_patients'])} test (patients.json); the tasks' classes are "
          + ("bone-age bins of the training patients" if split["bin_edges_months"] else "the shards' stages"))
    if split["bin_edges_months"]:
      age = xray_model.fit_age_model(cfg, args.workdir, progress=not args.no_progress)
      print(f"supervised answer beside it (age_model.npz): ridge regression of bone age on the "
            f"{len(split['roi_names'])} ROIs' features of the {age.n_train} train + validation radiographs, "
            f"leave-one-out error {age.loo_mae:.1f} months (MAE); `adapt --workdir {args.workdir} --data SHARDS` "
            f"compares both")
    else:
      print("note: the shards carry no bone ages, so no supervised age model was fitted beside it")
  for w in r["warnings"]:   # last, where a user looks
    print(f"warning: {w}")
  return 0
