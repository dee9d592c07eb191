"""`classify`: adapts a meta-trained model to your own support images and classifies query images.

Folders (docs/own-episodes.md):

  --support S --query Q    one episode: S/<class>/<images>; Q either flat
                           (Q/<images>: predictions only) or Q/<class>/<images>
                           with support class names (accuracy too)
  --episodes E             many: E/<episode>/support/ and E/<episode>/query/
                           as above; every episode scored, mean accuracy with
                           its 95% t interval

Images are decoded as the run's training images were (Omniglot's reader for an
Omniglot run: gray, Lanczos to the model's size, inverted so ink = 255; the
image-folder fitting for other data), then adapted to with the run's inner
steps.  --out writes predictions.csv (episode, file, true class if known,
predicted class, each class's probability) and results.json.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser(
      "classify", help="adapt a meta-trained model to folders of support images and classify query images",
      formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
examples:
  python run.py classify --workdir runs/omniglot --support my/support --query my/query
  python run.py classify --workdir runs/lake --episodes lake_runs/ --out lake_results/
""")
  p.add_argument("--workdir", default="runs/default", metavar="W",
                 help="folder holding a meta-trained model (default runs/default, where `meta-train` puts it)")
  p.add_argument("--support", metavar="DIR", help="one folder per class of support images")
  p.add_argument("--query", metavar="DIR", help="query images: flat (unlabelled) or one folder per class")
  p.add_argument("--episodes", metavar="DIR", help="a folder of episode folders, each with support/ and query/")
  p.add_argument("--steps", type=int, default=None, metavar="N",
                 help="inner SGD steps (default: the run's eval_inner_steps)")
  p.add_argument("--preprocess", choices=("auto", "omniglot", "folder"), default="auto",
                 help="image decoding: auto (the run's training data's: omniglot for an Omniglot run, else "
                      "folder), omniglot (dark ink on white, inverted), folder (the image-folder fitting)")
  p.add_argument("--out", metavar="DIR", help="write predictions.csv and results.json here")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
  p.add_argument("--no-progress", action="store_true", help="no progress output")
  p.set_defaults(func=main)
  return p


def _csv(results) -> str:
  names = sorted({c for r in results for c in r.episode.classes})
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["episode", "file", "true_class", "predicted_class"] + [f"p_{c}" for c in names])
  for r in results:
    ep = r.episode
    for k, f in enumerate(ep.query_files):
      p = dict(zip(ep.classes, r.probs[k]))
      true = ep.classes[ep.query_labels[k]] if ep.labelled else ""
      w.writerow([ep.name, os.path.relpath(f, ep.query_dir), true, ep.classes[r.predicted[k]]]
                 + [f"{p[c]:.6f}" if c in p else "" for c in names])
  return buf.getvalue()


def _results(args, learner, kind, results, stat) -> dict:
  cfg = learner.config
  return {
      "model": {"workdir": os.path.abspath(args.workdir), "dataset": cfg.dataset, "network": cfg.model,
                "outputs": learner.num_outputs, "image_size": cfg.image_size, "channels": cfg.channels,
                "steps": learner.steps, "synthetic_training_data": cfg.dataset == "synthetic"},
      "preprocessing": kind,
      "accuracy": stat,
      "episodes": [{"name": r.episode.name, "support": os.path.abspath(r.episode.support_dir),
                    "query": os.path.abspath(r.episode.query_dir), "classes": list(r.episode.classes),
                    "support_images": len(r.episode.support_files), "query_images": len(r.episode.query_files),
                    "labelled": r.episode.labelled, "accuracy": r.accuracy} for r in results]}


def _print_summary(results, stat, kind, learner) -> None:
  cfg = learner.config
  print(f"model: {cfg.model} ({cfg.ways} outputs, meta-trained on {cfg.dataset}), {learner.steps} inner steps, "
        f"{kind} preprocessing to {cfg.image_size}x{cfg.image_size}x{cfg.channels}")
  if len(results) == 1:
    r = results[0]
    ep = r.episode
    print(f"{len(ep.classes)} classes, {len(ep.support_files)} support and {len(ep.query_files)} query images")
    if not ep.labelled:
      shown = 20
      for k, f in enumerate(ep.query_files[:shown]):
        print(f"  {os.path.relpath(f, ep.query_dir)}: {ep.classes[r.predicted[k]]} "
              f"(p={r.probs[k, r.predicted[k]]:.3f})")
      if len(ep.query_files) > shown:
        print(f"  ... {len(ep.query_files) - shown} more (--out writes them all)")
  else:
    print(f"{len(results)} episodes, {sum(len(r.episode.query_files) for r in results)} query images")
  if stat is not None:
    n = stat["episodes"]
    ci = f" ± {100 * stat['ci95']:.2f} % (95% t interval, {n} episodes)" if n > 1 else " % (one episode)"
    print(f"accuracy: {100 * stat['accuracy']:.2f}{ci}")
    unlabelled = sum(not r.episode.labelled for r in results)
    if unlabelled:
      print(f"({unlabelled} episode(s) with unlabelled queries are not in the accuracy)")


def main(args) -> int:
  from maml_jax import checkpoints, episode_folders as ef, evaluate, io as files
  from maml_jax.errors import UserError
  from maml_jax.learner import learner_from_trained

  if args.episodes and (args.support or args.query):
    raise UserError("--episodes excludes --support and --query (each episode folder holds its own)")
  if not args.episodes and not (args.support and args.query):
    raise UserError("pass --support DIR and --query DIR (one episode), or --episodes DIR")
  if args.steps is not None and args.steps < 0:
    raise UserError(f"--steps must be >= 0, got {args.steps}")
  if args.out:
    files.check_output_dir(args.out, "--out", args.overwrite)
  # Folders first: a layout mistake is reported before the model is loaded.
  episodes = (ef.scan_episodes(args.episodes) if args.episodes
              else [ef.scan_episode(args.support, args.query)])
  if not os.path.isdir(args.workdir):
    raise UserError(f"--workdir {args.workdir}: no such folder (meta-train a model there first)")
  learner = learner_from_trained(checkpoints.load_trained(args.workdir), args.steps)
  cfg = learner.config
  if cfg.dataset == "synthetic":
    print(f"note: {args.workdir} was meta-trained on SYNTHETIC data; its predictions on real images mean little",
          file=sys.stderr)
  kind = ef.preprocessing_for(cfg, args.preprocess)
  read = ef.image_reader(kind, cfg.image_size, cfg.channels)
  results = ef.classify_episodes(learner, episodes, read, progress=not args.no_progress)
  accs = [r.accuracy for r in results if r.accuracy is not None]
  stat = evaluate.summary(accs) if accs else None
  if stat is not None:   # one episode has no interval: null in JSON, not NaN
    stat = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in stat.items()}
  _print_summary(results, stat, kind, learner)
  if args.out:
    files.write_text(os.path.join(args.out, "predictions.csv"), _csv(results))
    files.write_json(os.path.join(args.out, "results.json"), _results(args, learner, kind, results, stat))
    print(f"wrote {os.path.join(args.out, 'predictions.csv')}, {os.path.join(args.out, 'results.json')}")
  return 0
