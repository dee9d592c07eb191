"""`run.py evaluate`: evaluate a saved run again on its meta-test classes."""

HELP = "evaluate a meta-trained workdir on its meta-test classes"


def add_parser(sub):
  p = sub.add_parser("evaluate", help=HELP, description=HELP)
  p.add_argument("--workdir", required=True, help="a meta-train workdir")
  p.add_argument("--episodes", type=int, default=None, help="episodes (default: the run's test_episodes)")
  p.add_argument("--inner-steps", type=int, default=None, help="inner steps (default: the run's eval_inner_steps)")
  p.add_argument("--shots", type=int, default=None,
                 help="support images per class (default: the run's); e.g. a 5-shot-trained model at 20 shots")
  p.add_argument("--checkpoint", choices=("best", "latest", "init"), default="best",
                 help="which parameters: the best or latest checkpoint, or 'init' = the same network "
                      "without meta-training (its initialisation), on the same episodes")
  p.add_argument("--ensemble", type=int, default=1, metavar="K",
                 help="score the ensemble of the run's K best checkpoints by validation (MAML++): each adapted "
                      "on the support set, query class probabilities averaged; the run must have kept K "
                      "(meta-train --keep-best K)")
  p.add_argument("--no-progress", action="store_true")
  p.set_defaults(func=main)


def main(args) -> int:
  import os
  from maml_jax.errors import UserError
  from maml_jax.train import evaluate_workdir
  if not os.path.isfile(os.path.join(args.workdir, "config.json")):
    raise UserError(f"--workdir {args.workdir}: no meta-train run there (no config.json); train one with "
                    f"`python run.py meta-train --workdir {args.workdir}`")
  if args.episodes is not None and args.episodes < 1 or args.inner_steps is not None and args.inner_steps < 0:
    raise UserError("--episodes must be >= 1 and --inner-steps >= 0")
  r = evaluate_workdir(args.workdir, args.episodes, args.inner_steps, args.checkpoint, not args.no_progress,
                       args.shots, args.ensemble)
  tag = " [SYNTHETIC data]" if r["synthetic_data"] else ""
  which = r.get("ensemble") or f"step {r['checkpoint_step']}"
  print(f"meta-test {r['ways']}-way {r['shots']}-shot accuracy{tag}: "
        f"{100 * r['test_accuracy']:.2f} +- {100 * r['test_ci95']:.2f}% "
        f"(95% CI, {r['test_episodes']} episodes, {r['eval_inner_steps']} inner steps, {which})")
  return 0
