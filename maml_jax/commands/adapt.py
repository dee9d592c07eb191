"""`adapt`: adapts a meta-trained initialisation to few labelled examples and scores it.

--dataset smi (default): the skeletal-maturity experiment.  Repeated trials
(5 as in the paper), each drawing K support and 15 query images per stage
(disjoint, also by patient), adapting on the support images' ROI crops,
classifying every ROI of every query image and combining them by majority
vote, probability averaging and support-weighted vote.  On the same trials it
also scores the baselines a reader needs to judge the number: the same
initialisation fine-tuned like base learning, base learning (the network from
random initialisation) and nearest class mean, beside chance.  Writes report.md,
metrics.json, confusion.png and roi_accuracy.png.  Without --data it runs on
the SYNTHETIC demo data and says so.

--dataset omniglot / meta-test: N-way K-shot episodes of unseen classes (the
test split of Omniglot, or of the data set the model was meta-trained on),
600 episodes by default; accuracy with a 95% interval.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser(
      "adapt", help="adapt a meta-trained model to few examples (SMI stages, or unseen classes) and score it",
      formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
examples:
  python run.py adapt --workdir runs/default                          # SYNTHETIC demo data, 5 shots
  python run.py adapt --workdir runs/paper --data smi_shards/ --shots 20 --save smi_model/
  python run.py adapt --workdir runs/omniglot --dataset omniglot --shots 1
""")
  p.add_argument("--workdir", default="runs/default", metavar="W",
                 help="folder holding a meta-trained model (default runs/default, where `meta-train` puts it)")
  p.add_argument("--dataset", choices=("smi", "omniglot", "meta-test"), default="smi",
                 help="smi: skeletal maturity from ROI shards (default); omniglot: Omniglot's unseen "
                      "test classes; meta-test: the test classes of the data set the model was trained on")
  p.add_argument("--data", metavar="DIR",
                 help="smi: a shard folder from `prepare-smi` (default: the SYNTHETIC demo data); "
                      "omniglot/meta-test: the source data folder, if not the configuration's")
  p.add_argument("--shots", type=int, default=None, metavar="K",
                 help="support images per class: 5, 10 or 20 for smi (default 5; the paper's main setting "
                      "is 20); for omniglot/meta-test the model's training shots by default")
  p.add_argument("--queries", type=int, default=15, metavar="Q", help="query images per class (default 15)")
  p.add_argument("--trials", type=int, default=None, metavar="T",
                 help="repetitions with fresh draws (default 5 for smi, 600 episodes otherwise)")
  p.add_argument("--seed", type=int, default=0, help="trial t draws from (seed, t) (default 0)")
  p.add_argument("--steps", type=int, default=None, metavar="N",
                 help="inner SGD steps (default: the configuration's eval_inner_steps)")
  p.add_argument("--per-roi-learners", action="store_true",
                 help="smi: adapt one learner per ROI instead of one over all ROIs")
  p.add_argument("--no-baselines", action="store_true",
                 help="smi: skip the baselines scored beside the meta-learned result (fine-tuning, base "
                      "learning, nearest class mean)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.add_argument("--no-weighted", action="store_true",
                 help="smi: skip the weighted vote (saves its two cross-validation adaptations per trial)")
  p.add_argument("--out", metavar="DIR", help="report folder (default: W/adapt-<dataset>-<K>shot, with -synthetic for the demo data)")
  p.add_argument("--save", metavar="DIR",
                 help="smi: keep the model adapted in trial 0 (parameters, support crops, settings) for `predict`")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out or --save folder")
  p.add_argument("--demo-seed", type=int, default=0, help="seed of the synthetic demo data (default 0)")
  p.set_defaults(func=main)
  return p


def _default_out(args, name: str, ours: tuple[str, ...]) -> str:
  """The report folder inside the workdir: its own earlier report is replaced, other files are not."""
  from maml_jax import io as files
  out = os.path.join(args.workdir, name)
  files.check_output_dir(out, "the report folder", args.overwrite, ours=ours)
  return out


def _smi(args, learner) -> int:
  import numpy as np
  from maml_jax.experiment import smi_trials
  from maml_jax.experiment.sources import describe_smi
  from maml_jax.smi import predictor, report, shards, summary, synthetic, voting

  shots = 5 if args.shots is None else args.shots
  trials = 5 if args.trials is None else args.trials
  if args.data:
    data = shards.load_shards(args.data)
    where = f"shards {args.data}"
  else:
    where = "the SYNTHETIC demo data"
    print("=" * 78 + "\nNo --data given: using the SYNTHETIC demo data (generated drawings, not X-rays).\n"
          "Results say nothing about clinical accuracy.  Pass --data DIR (from prepare-smi) for real data.\n"
          + "=" * 78, file=sys.stderr)
    data = synthetic.load_demo(args.demo_seed)
  if data.synthetic and args.data:
    print(f"note: {args.data} holds SYNTHETIC data (its manifest says so)", file=sys.stderr)
  print(describe_smi(data, args.data or ""))
  weighted = not args.no_weighted
  progress = not args.no_progress
  start = time.time()
  res = smi_trials.run_trials(data, learner, shots=shots, queries=args.queries, trials=trials, seed=args.seed,
                              per_roi=args.per_roi_learners, weight_folds=weighted, keep_first=bool(args.save),
                              progress=progress, where=where)
  metrics = summary.summarise(res, data.classes, data.roi_names, weight_folds=weighted)
  if not args.no_baselines:
    metrics["comparison"] = smi_trials.compare(data, learner, shots=shots, queries=args.queries, trials=trials,
                                               seed=args.seed, progress=progress, where=where,
                                               meta=None if args.per_roi_learners else res)
  cfg = learner.config
  metrics = {
      "synthetic": data.synthetic,
      "data": {"shards": os.path.abspath(args.data) if args.data else None, "source": data.source,
               "num_images": data.num_images, "roi_names": list(data.roi_names),
               "classes": list(data.classes), "counts": data.counts().tolist(),
               "label_scheme": data.label_scheme},
      "model": {"workdir": os.path.abspath(args.workdir), "network": cfg.model, "image_size": cfg.image_size,
                "channels": cfg.channels, "ways": cfg.ways, "steps": learner.steps,
                "per_roi_learners": args.per_roi_learners},
      "protocol": {"trials": trials, "shots": shots, "queries": args.queries, "seed": args.seed,
                   "patient_disjoint": data.patient_id is not None,
                   "weights": ("per-ROI accuracy on held-out support images (2-fold cross-validation within "
                               "the support set), w = max(acc - 1/C, 0)" if weighted else "not computed")},
      **metrics,
      "trials": {"support_rows": res.support_rows.tolist(), "query_rows": res.query_rows.tolist(),
                 "weights": res.weights.tolist()},
      "seconds": round(time.time() - start, 1)}
  if data.image_id is not None:
    metrics["trials"]["support_image_ids"] = [data.image_id[r].tolist() for r in res.support_rows]
  out = args.out or _default_out(args, f"adapt-smi-{shots}shot" + ("-synthetic" if data.synthetic else ""),
                                 report.SMI_REPORT_FILES)
  paths = report.write_smi_report(out, metrics)
  print(report.smi_summary(metrics))
  print(f"wrote {', '.join(paths)}")
  if args.save:
    acc0 = float(np.mean(voting.majority(res.probs[0]) == res.query_y[0]))
    predictor.save(args.save, config=cfg, params=res.first_params, support_rois=res.first_support[0],
                   support_y=res.first_support[1], roi_names=data.roi_names, classes=data.classes,
                   weights=res.weights[0], per_roi=args.per_roi_learners, synthetic=data.synthetic, overwrite=args.overwrite,
                   info={"label_scheme": data.label_scheme, "source": data.source, "shots": shots,
                         "steps": learner.steps, "meta_trained": os.path.abspath(args.workdir),
                         "trial": 0, "trial0_majority_accuracy": acc0})
    print(f"saved the model adapted in trial 0 (majority-vote accuracy {100 * acc0:.1f}%) to {args.save}")
  return 0


def _xray(args) -> int:
  """An X-ray model (`meta-train --preset xray`): the experiment grid on the
  user's shards, its meta-learned head beside the supervised answer trained on
  the same patients and the baselines, on the same draws."""
  from maml_jax.checkpoints import read_config
  from maml_jax.experiment import runner
  from maml_jax.experiment.backbones import NetSpec
  shots = 5 if args.shots is None else args.shots
  trials = 20 if args.trials is None else args.trials
  if args.per_roi_learners or args.steps is not None:
    from maml_jax.smi.errors import SMIDataError
    raise SMIDataError("an X-ray model adapts its head on all ROIs with its own inner steps; --per-roi-learners "
                       "and --steps do not apply to it")
  cfg = read_config(args.workdir)
  name = f"adapt-smi-{shots}shot" + ("" if args.data else "-synthetic")
  out = args.out or os.path.join(args.workdir, name)
  from maml_jax import io as files
  # The report folder is an experiment folder: the same command again resumes
  # it; --overwrite starts it afresh.
  from maml_jax.experiment.store import OUTPUT_FILES
  files.check_output_dir(out, "--out" if args.out else "the report folder", args.overwrite, ours=OUTPUT_FILES)
  if args.overwrite and os.path.isdir(out):
    import shutil
    shutil.rmtree(out)
  from maml_jax.smi import shards, synthetic, xray_model
  data = shards.load_shards(args.data) if args.data else synthetic.load_demo(args.demo_seed)
  boundaries, why = xray_model.target_boundaries(args.workdir, data)
  aged = os.path.isfile(os.path.join(args.workdir, xray_model.AGE_MODEL_FILE))
  if boundaries is None:
    print(f"note: no no-support age column: {why}", file=sys.stderr)
  methods = ("metaxr",) + (("agereg",) if boundaries else ()) + (("agemeans",) if aged else ()) + \
      (() if args.no_baselines else ("base", "ncm", "linprobe"))
  s = runner.Settings(out=out, shots=(shots,), repeats=trials, queries=args.queries, seed=args.seed,
                      methods=methods, backbones=("pretrained",), feature_size=cfg.image_size,
                      spec=NetSpec(), smi_data=args.data, demo_seed=args.demo_seed,
                      xray_workdir=args.workdir, progress=not args.no_progress)
  r = runner.execute(s, "smi", command=" ".join(sys.argv[1:]))
  print(f"smi: {r['cells']} new cells in {r['seconds']:.0f} s")
  with open(os.path.join(out, "table3.md")) as f:
    print(f.read().strip())
  print(f"wrote {', '.join(r['paths'])}")
  if args.save:
    _save_xray(args, data, shots)
  return 0


def _save_xray(args, data, shots: int) -> None:
  """Keeps the X-ray model's head adapted on trial 0's support images (the
  draw the report's first repeat scored) for `predict`."""
  import numpy as np
  from maml_jax.experiment.sources import smi_source
  from maml_jax.learner import adapt_fn, load_learner
  from maml_jax.smi import predictor, voting
  learner = load_learner(args.workdir)
  draw = smi_source(data, queries=args.queries, seed=args.seed).draw(shots, 0)
  cfg, r = learner.config, len(data.roi_names)
  sx = predictor.layout(data.rois[draw.support], cfg, False)
  params, probs = adapt_fn(learner, data.num_classes)(sx, np.repeat(draw.support_y, r),
                                                      predictor.layout(data.rois[draw.query], cfg, False))
  acc0 = float(np.mean(voting.majority(np.asarray(probs).reshape(len(draw.query), r, -1)) == draw.query_y))
  predictor.save(args.save, config=cfg, params=params, support_rois=data.rois[draw.support],
                 support_y=draw.support_y, roi_names=data.roi_names, classes=data.classes,
                 weights=np.full(r, 1.0 / r), per_roi=False, synthetic=data.synthetic, overwrite=args.overwrite,
                 info={"label_scheme": data.label_scheme, "source": data.source, "shots": shots,
                       "steps": learner.steps, "meta_trained": os.path.abspath(args.workdir), "trial": 0,
                       "trial0_majority_accuracy": acc0})
  print(f"saved the X-ray model's head adapted in trial 0 (majority-vote accuracy {100 * acc0:.1f}%) to {args.save}")


def _episodes(args, learner) -> int:
  from maml_jax import data_sources, evaluate
  from maml_jax.errors import UserError
  from maml_jax.smi import report

  cfg = learner.config
  data_cfg = cfg.replace(dataset="omniglot", data_dir="") if args.dataset == "omniglot" else cfg
  if args.data:
    data_cfg = data_cfg.replace(data_dir=args.data)
  shots = cfg.shots if args.shots is None else args.shots
  episodes = 600 if args.trials is None else args.trials
  test = data_sources.load_splits(data_cfg, args.workdir)["test"]
  if test.image_shape != (cfg.image_size, cfg.image_size, cfg.channels):
    raise UserError(f"{args.dataset} test images are {test.image_shape}; the model expects "
                    f"{(cfg.image_size, cfg.image_size, cfg.channels)}")
  try:
    accs = evaluate.evaluate_params(learner.model, cfg, learner.meta_params, test, episodes=episodes,
                                    seed=args.seed, steps=learner.steps, shots=shots, queries=args.queries,
                                    desc=f"{args.dataset} episodes",
                                    progress=not args.no_progress).tolist()
  except ValueError as e:   # the sampler: too few classes or images per class for these episodes
    raise UserError(f"{args.dataset} test split: {e}") from None
  stat = evaluate.summary(accs)
  metrics = {"dataset": f"{args.dataset} ({data_cfg.dataset})", "synthetic": bool(test.synthetic),
             "model": {"workdir": os.path.abspath(args.workdir), "network": cfg.model, "steps": learner.steps},
             "episodes": episodes, "ways": cfg.ways, "shots": shots, "queries": args.queries, "seed": args.seed,
             "query_bn": cfg.query_bn,
             "accuracy": {"mean": stat["accuracy"], "ci95": stat["ci95"], "std": stat["std"], "n": stat["episodes"],
                          "per_episode": accs}}
  out = args.out or _default_out(args, f"adapt-{args.dataset}-{shots}shot", report.EPISODE_REPORT_FILES)
  paths = report.write_episode_report(out, metrics)
  tag = "SYNTHETIC " if test.synthetic else ""
  print(f"{tag}{args.dataset}: {cfg.ways}-way {shots}-shot, {episodes} episodes: accuracy "
        f"{100 * stat['accuracy']:.2f} ± {100 * stat['ci95']:.2f} % (95% t interval)")
  print(f"wrote {', '.join(paths)}")
  return 0


def main(args) -> int:
  from maml_jax.errors import USER_ERRORS
  from maml_jax.smi.errors import SMIDataError, report
  from maml_jax.learner import load_learner

  try:
    if args.shots is not None and args.shots < 1:
      raise SMIDataError(f"--shots must be >= 1, got {args.shots}")
    if args.queries < 1 or (args.trials is not None and args.trials < 1):
      raise SMIDataError("--queries and --trials must be >= 1")
    if args.dataset != "smi" and (args.save or args.per_roi_learners):
      raise SMIDataError("--save and --per-roi-learners apply to --dataset smi only")
    if not os.path.isdir(args.workdir):
      raise SMIDataError(f"{args.workdir}: no such workdir (meta-train a model there first)")
    if args.steps is not None and args.steps < 0:
      raise SMIDataError(f"--steps must be >= 0, got {args.steps}")
    from maml_jax import io as files
    if args.out:
      files.check_output_dir(args.out, "--out", args.overwrite)
    if args.save:
      files.check_output_dir(args.save, "--save", args.overwrite)
    if args.dataset == "smi" and os.path.exists(os.path.join(args.workdir, "patients.json")):
      return _xray(args)
    try:
      learner = load_learner(args.workdir, args.steps)
    except (FileNotFoundError, ValueError) as e:
      raise SMIDataError(f"{args.workdir}: cannot load the meta-trained model ({e})") from None
    return _smi(args, learner) if args.dataset == "smi" else _episodes(args, learner)
  except USER_ERRORS as e:
    return report(e)
