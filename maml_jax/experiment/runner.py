"""The experiment end to end: data, columns, models, the grid, the report.

`execute(settings, dataset)` runs the grid of one data set ("metadataset" for
Table 2, "smi" for Tables 3 and 4) into `settings.out`:

1. the test source (meta-dataset test classes, or the SMI ROI crops);
2. the settings that decide the numbers are recorded in (or checked against)
   `<out>/experiment.json`;
3. only for columns with missing cells: the pretrained features of every
   crop (cached), the heads meta-learned on frozen features of the meta-train
   classes, the meta-trained scratch networks (given workdirs, or trained
   here with `meta_steps`);
4. the grid (`grid.run`), each cell stored when done;
5. the report of everything in the store.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from typing import Any, Optional

import numpy as np

from maml_jax.baselines import base_learning, simple
from maml_jax.errors import UserError
from maml_jax.experiment import backbones as bb
from maml_jax.experiment import feature_meta, grid, meta_runs, paper, report, store
from maml_jax.experiment.methods import Context, predictor
from maml_jax.experiment.sources import TaskSource, metadataset_source, smi_source

WAYS = 5   # the paper's 5-way tasks; the SMI data bring their own class count
# Meta-train settings that describe the scratch network or its data, not the
# episodes and loops: `--meta-set` overrides of these do not apply to the heads.
NETWORK_FIELDS = ("model", "width", "image_size", "channels", "dataset", "data_dir", "manual_dir", "image_folder",
                  "conv_impl", "steps")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything `run.py experiment` takes (see its --help)."""
  out: str = "runs/experiment"
  shots: tuple[int, ...] = (5, 10, 20)
  repeats: int = 5
  queries: int = 15
  seed: int = 0
  methods: tuple[str, ...] = paper.METHODS
  backbones: tuple[str, ...] = paper.BACKBONES
  pretrained: str = "efficientnet"
  vgg16_weights: Optional[str] = None
  feature_size: int = 224
  spec: bb.NetSpec = bb.NetSpec()
  dataset: str = "tinyimagenet"
  data_dir: str = ""
  manual_dir: Optional[str] = None
  image_folder: str = ""
  split_seed: int = 0
  data_size: int = 64
  smi_data: Optional[str] = None
  demo_seed: int = 0
  meta_workdirs: tuple[tuple[str, str], ...] = ()
  meta_steps: Optional[int] = None
  head_steps: Optional[int] = None
  meta_overrides: tuple[tuple[str, Any], ...] = ()
  progress: bool = True
  xray_meta: float = 0.0          # share of SMI patients set aside to meta-train "metaxr" (0 = none)
  xray_bins: int = 10             # bone-age bins of the X-ray meta-training tasks
  xray_train: Optional[str] = None  # shards of another pool to train metaxr / the age model on (all scored then)
  xray_workdir: Optional[str] = None  # or an X-ray model already trained (`meta-train --preset xray`)

  def columns(self) -> list[tuple[str, str]]:
    # The supervised age columns read the pretrained features only.
    return paper.column_order([(m, b) for m in self.methods for b in self.backbones
                               if not (m in paper.AGE_METHODS and b != "pretrained")])


def load_meta_splits(s: Settings) -> dict:
  """The meta-dataset's {'train','val','test'} ClassImages at data_size, grayscale
  (the class split lives in `<out>/data/splits.json`)."""
  from maml_jax.config import Config
  from maml_jax.data_sources import load_splits
  cfg = Config(dataset=s.dataset, data_dir=s.data_dir, manual_dir=s.manual_dir or "", image_folder=s.image_folder,
               image_size=s.data_size, channels=1, split_seed=s.split_seed, ways=WAYS, shots=max(s.shots),
               queries=s.queries, eval_queries=s.queries)
  return load_splits(cfg, os.path.join(s.out, "data"))


def load_smi(s: Settings, save: bool = True):
  """(the SMI data, the X-ray patient split or None, the training side's data
  or None).  With `xray_meta`, a share of the data's patients is the training
  side; with `xray_train`, another pool's shards are, and all of the data is
  scored.  The split is saved in (or checked against) `<out>/xray-split.json`
  (with `save`; `execute` saves it once every draw has been checked)."""
  from maml_jax.experiment import xray_tasks
  from maml_jax.smi import shards, synthetic
  data = shards.load_shards(s.smi_data) if s.smi_data else synthetic.load_demo(s.demo_seed)
  if s.xray_workdir:
    try:
      split = xray_tasks.workdir_split(s.xray_workdir, data, s.smi_data or "the SYNTHETIC demo data")
    except ValueError as e:
      raise UserError(str(e)) from None
    train = None   # the model and its age model are read from the workdir
  elif s.xray_train:
    train = shards.load_shards(s.xray_train)
    try:
      split = xray_tasks.cross_split(train, data, s.xray_train, s.smi_data or "the SYNTHETIC demo data")
    except ValueError as e:
      raise UserError(str(e)) from None
  elif s.xray_meta:
    split = xray_tasks.split_patients(data, s.xray_meta, s.seed)
    train = data.take(np.asarray(split["meta_rows"]))
  else:
    return data, None, None
  if save:
    xray_tasks.save_or_check(s.out, split)
  return data, split, train


def load_source(s: Settings, dataset: str, meta_splits, smi=None) -> TaskSource:
  if dataset == "metadataset":
    test = meta_splits()["test"]
    desc = (f"{s.dataset} meta-test split ({test.num_classes} classes never used in meta-training, "
            f"{len(test.images)} images at {s.data_size}x{s.data_size} grayscale; split_seed {s.split_seed})")
    return metadataset_source(test, ways=WAYS, queries=s.queries, seed=s.seed, description=desc)
  data, split, _ = smi if smi is not None else load_smi(s)
  where = s.smi_data or ""
  if split is not None and not (s.xray_train or s.xray_workdir):
    data = data.take(np.asarray(split["scored_rows"]))
    where = f"{where} (the {len(split['scored_patients'])} patients not used for X-ray meta-training)"
  return smi_source(data, queries=s.queries, seed=s.seed, where=where)


def backbone_name(s: Settings) -> str:
  if s.pretrained == "efficientnet":
    return f"efficientnet-lite0-{s.feature_size}px"
  if s.pretrained == "vgg16":
    return f"vgg16:{os.path.abspath(s.vgg16_weights or '')}"
  return f"supervised:{s.spec.model}x{s.spec.width}:{bb.SUPERVISED_EPOCHS}epochs:{s.dataset}:split{s.split_seed}"


def make_backbone(s: Settings, meta_splits) -> bb.Backbone:
  if s.pretrained == "efficientnet":
    return bb.efficientnet(s.feature_size)
  if s.pretrained == "vgg16":
    if not s.vgg16_weights:
      raise UserError("--pretrained vgg16 needs --vgg16-weights FILE (torchvision vgg16-397923af.pth or "
                       "Keras vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5)")
    return bb.vgg16(s.vgg16_weights, s.data_size)
  if s.pretrained == "supervised":
    return bb.supervised(meta_splits()["train"], s.spec._replace(image_size=s.data_size),
                         cache_dir=os.path.join(s.out, "cache"), seed=s.seed, progress=s.progress)
  raise UserError(f"unknown --pretrained {s.pretrained!r}; choose from {bb.PRETRAINED}")


# The modules whose code computes a cell's number: the grid, its predictors,
# sources and backbones, and the meta-training of the meta-learned columns.
# Training from random initialisation amplifies any change in floating-point
# rounding (an op reordered, a fusion changed), so cells computed by other code
# are not mixed.  The fingerprint covers these and every project module they
# import, directly or not, at module level or inside a function (`code_files`):
# a trainer module added or edited later is covered without anyone listing it.
CELL_MODULES = ("maml_jax.experiment.grid", "maml_jax.experiment.methods", "maml_jax.experiment.sources",
                "maml_jax.experiment.backbones", "maml_jax.experiment.feature_meta", "maml_jax.experiment.meta_runs",
                "maml_jax.experiment.xray_tasks")
# This module's own code decides the meta-learned columns' settings, but its
# imports (the report, the store) do not decide numbers: only its file counts.
CELL_FILES = ("experiment/runner.py",)


def _module_file(name: str, package: str) -> Optional[str]:
  """The source file of project module `name` ('maml_jax.x.y') under the package
  folder `package`, or None for another package's module or a name that is no
  module (e.g. a function imported from one).  `maml_jax.data` is the `data/`
  folder beside the package in a source checkout (see `maml_jax/__init__.py`)."""
  parts = name.split(".")
  if parts[0] != "maml_jax":
    return None
  base, rest = package, parts[1:]
  if rest[:1] == ["data"] and not os.path.isdir(os.path.join(package, "data")):
    base, rest = os.path.join(os.path.dirname(package), "data"), rest[1:]
  path = os.path.join(base, *rest)
  for candidate in (os.path.join(path, "__init__.py"), path + ".py"):
    if os.path.isfile(candidate):
      return candidate
  return None


def _imported_modules(path: str, name: str) -> set[str]:
  """Every module name that the source at `path` (module `name`) imports
  anywhere in its text, and for `from m import a` both m and m.a."""
  import ast
  with open(path, "rb") as f:
    tree = ast.parse(f.read(), path)
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:   # relative: from the package, up level-1 packages
        up = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
      out.add(base)
      out.update(f"{base}.{a.name}" for a in node.names)
  return out


def code_files(package: Optional[str] = None) -> list[str]:
  """The source files behind a cell: `CELL_MODULES`, the project modules they
  import transitively (and the packages' `__init__` files on the way), and
  `CELL_FILES`; absolute paths, sorted.  `package`: the `maml_jax` folder
  (default: this checkout's)."""
  package = package or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  seen: dict[str, str] = {}
  todo = list(CELL_MODULES)
  while todo:
    name = todo.pop()
    parts = name.split(".")
    for i in range(1, len(parts) + 1):   # importing a.b.c runs a and a.b first
      mod = ".".join(parts[:i])
      path = _module_file(mod, package)
      if path is not None and path not in seen:
        seen[path] = mod
        todo.extend(_imported_modules(path, mod))
  return sorted(set(seen) | {os.path.join(package, f) for f in CELL_FILES})


def code_fingerprint(package: Optional[str] = None) -> str:
  """sha1 (12 hex digits) of the source of `code_files(package)`, each under its
  path relative to the folder that holds the package."""
  package = package or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  root = os.path.dirname(package)
  h = hashlib.sha1()
  for p in code_files(package):
    h.update(os.path.relpath(p, root).encode())
    with open(p, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:12]


def fixed_settings(s: Settings, source: TaskSource) -> dict:
  """What decides every cell's number (checked on resume)."""
  return {"code": code_fingerprint(), "data": source.description, "synthetic": source.synthetic,
          **({"xray_meta_training": f"{s.xray_meta:g} of the patients (seed {s.seed}), {s.xray_bins} bone-age "
                                    f"bins; split in xray-split.json"} if s.xray_meta and not s.xray_train else {}),
          **({"xray_meta_training": f"all of {s.xray_train} (another pool), {s.xray_bins} bone-age bins; "
                                    f"split in xray-split.json"} if s.xray_train else {}),
          **({"xray_meta_training": f"the X-ray model in {os.path.abspath(s.xray_workdir)}"}
             if s.xray_workdir else {}),
          "roi_names": list(source.roi_names),
          "seed": s.seed, "queries_per_class": s.queries, "ways": source.ways,
          "meta_dataset": f"{s.dataset} (split_seed {s.split_seed}, {s.data_size}x{s.data_size} grayscale)",
          "pretrained_backbone": backbone_name(s),
          "scratch_network": f"{s.spec.model} width {s.spec.width} at {s.spec.image_size}x{s.spec.image_size}x{s.spec.channels}",
          "base_learning": f"{base_learning.TRAIN_STEPS} full-batch Adam steps, lr {base_learning.LEARNING_RATE}, "
                           f"augmentation {base_learning.AUGMENTATION}, head {base_learning.HEAD_HIDDEN}",
          "ncm": f"cosine to L2-normalised class means (temperature {simple.COSINE_TEMPERATURE})",
          "linear_probe": f"logistic regression on L2-normalised features, L2 {simple.LINEAR_PROBE_L2}, "
                          f"{simple.LINEAR_PROBE_ITERATIONS} L-BFGS iterations"}


def _xray_head(s: Settings, smi, backbone, cache: str) -> tuple[Any, Any, str]:
  """The head meta-learned on X-ray tasks of the meta-training patients'
  frozen features: (config, meta-parameters, identity)."""
  from maml_jax.experiment import xray_tasks
  _, split, meta = smi
  r = len(meta.roi_names)
  train_rows, val_rows = xray_tasks.meta_sides(meta, np.arange(meta.num_images), s.seed)
  crops = meta.rois.reshape((-1,) + meta.rois.shape[2:] + (1,))
  feats = bb.features(backbone, crops, cache, f"smi-xray-meta-{xray_tasks.digest(split)}", progress=s.progress)
  shots = min(s.shots) * r                    # crops per class in the smallest support set
  # The most bins (up to --xray-bins) whose every class, on both meta sides,
  # holds a support set and at least 5 queries (ties in the ages make bins uneven).
  for bins in range(s.xray_bins, 1, -1):
    edges = xray_tasks.age_edges(meta, train_rows, bins)
    tcs = [xray_tasks.task_classes(meta, rows, r, edges) for rows in (train_rows, val_rows)]
    fewest = int(min(tc.class_count.min() for tc in tcs))
    if fewest >= shots + 5 and len(tcs[0].names) >= WAYS:
      break
  else:
    raise UserError(f"X-ray meta-training: no split of the {len(train_rows)} meta-training images into {WAYS} or "
                    f"more bone-age bins leaves {shots} support + 5 query crops in each; raise --xray-meta")
  sets = [feature_meta.FeatureSet(feats[tc.rows], tc.class_start, tc.class_count, ordered=True) for tc in tcs]
  queries = min(s.queries, fewest - shots)
  cfg = feature_meta.head_config("meta", steps=s.head_steps, seed=s.seed, ways=WAYS)
  cfg = cfg.replace(shots=shots, queries=queries, eval_queries=queries,
                    **{k: v for k, v in dict(s.meta_overrides).items() if k not in NETWORK_FIELDS}).validate()
  params, info = feature_meta.load_or_train_head(sets[0], sets[1], cfg, cache, f"metaxr-{backbone.name}",
                                                 s.progress)
  ident = (f"head meta-learned on {backbone.name} features of X-ray tasks ({len(sets[0].class_count)} bone-age "
           f"bins, {WAYS}-way {shots}-crop tasks) from {len(train_rows)} images of meta-training patients, "
           f"validated on {len(val_rows)} more (split {xray_tasks.digest(split)}): {cfg.steps} steps, best val "
           f"step {info['best']['step']} (val accuracy {info['best']['val_accuracy']:.3f})")
  return cfg, params, ident


def _age_model(s: Settings, smi, backbone, cache: str) -> tuple[Any, Optional[list], str]:
  """The supervised bone-age regression on the training side's frozen features
  (an image's ROI features concatenated), the scored stages' age boundaries
  (months; None when they cannot be known) and its identity."""
  from maml_jax.experiment import xray_tasks
  from maml_jax.smi import bone_age
  from maml_jax.smi.errors import SMIDataError
  if smi is None or smi[1] is None:
    raise UserError("the supervised age columns (agereg, agemeans) learn from other patients' bone ages: they "
                    "need SMI data and --xray-meta SHARE or --xray-train SHARDS")
  scored, split, train = smi
  if s.xray_workdir:
    from maml_jax.smi import xray_model
    model, _, _ = xray_model.load_age_model(s.xray_workdir)
    what = (f"the supervised age model of {os.path.abspath(s.xray_workdir)} (ridge, {model.n_train} "
            f"radiographs, LOO MAE {model.loo_mae:.1f} months)")
    boundaries, how = xray_model.target_boundaries(s.xray_workdir, scored)
    if boundaries is None:
      return model, None, f"{what}; no stage boundaries ({how})"
    return model, boundaries, f"{what}; stages begin at {', '.join(f'{b:g}' for b in boundaries)} months ({how})"
  else:
    crops = train.rois.reshape((-1,) + train.rois.shape[2:] + (1,))
    feats = bb.features(backbone, crops, cache, f"smi-xray-meta-{xray_tasks.digest(split)}", progress=s.progress)
    try:
      model = bone_age.fit_ridge(feats.reshape(train.num_images, -1), train.age_months,
                                 where=s.xray_train or "the training patients")
    except SMIDataError as e:
      raise UserError(str(e)) from None
    what = (f"ridge regression of bone age on {backbone.name} features of the {len(train.roi_names)} ROIs "
            f"(concatenated) of {model.n_train} training images (split {xray_tasks.digest(split)}); penalty "
            f"{model.penalty:.4g} by leave-one-out, LOO MAE {model.loo_mae:.1f} months")
  # The scored stages' own boundaries; for stages that are not age ranges,
  # estimated on the training side when it has the same stages.
  same = train is not None and tuple(train.classes) == tuple(scored.classes)
  try:
    boundaries, how = bone_age.stage_boundaries(scored.label_scheme, scored.num_classes,
                                                train.age_months if same else None, train.label if same else None)
    return model, boundaries, f"{what}; stages begin at {', '.join(f'{b:g}' for b in boundaries)} months ({how})"
  except SMIDataError as e:
    return model, None, f"{what}; no stage boundaries ({e})"


def _meta_learners(s: Settings, columns, ctx: Context, meta_splits, backbone, test_classes, smi=None) -> dict:
  """Learners of the meta-learned columns (and of "finetune", which starts from
  the "meta" column's initialisation), and their identities."""
  from maml_jax.learner import Learner, load_learner
  identities = {}
  given = dict(s.meta_workdirs)
  overrides = dict(s.meta_overrides)
  cache = os.path.join(s.out, "cache")
  columns = paper.column_order(list(columns) + [("meta", b) for m, b in columns if m == "finetune"])
  for method, backbone_kind in columns:
    if method not in paper.META_METHODS:
      continue
    if method == "metaxr":
      if smi is None or smi[1] is None:
        raise UserError("the metaxr column meta-trains on X-ray tasks: it needs SMI data and --xray-meta SHARE "
                         "(the share of patients set aside for it)")
      if backbone_kind != "pretrained":
        raise UserError("metaxr runs on the pre-trained backbone only (--backbones pretrained, or drop "
                         "metaxr from --methods for the scratch columns)")
      if s.xray_workdir:
        ctx.learners[(method, "pretrained")] = load_learner(s.xray_workdir)
        identities[f"{method}/pretrained"] = (f"the X-ray model in {os.path.abspath(s.xray_workdir)}, best "
                                              f"step {_trained_step(s.xray_workdir)}")
        continue
      cfg, params, ident = _xray_head(s, smi, backbone, cache)
      ctx.learners[(method, "pretrained")] = Learner(cfg, base_learning.FeatureHead(cfg.ways), params,
                                                     cfg.eval_inner_steps)
      identities[f"{method}/pretrained"] = ident
      continue
    if backbone_kind == "pretrained":
      splits = meta_splits()
      tag = f"{s.dataset}-split{s.split_seed}-{s.data_size}px"
      train = feature_meta.FeatureSet.of(bb.features(backbone, splits["train"].images, cache, f"{tag}-train",
                                                      progress=s.progress),
                                         splits["train"])
      val = feature_meta.FeatureSet.of(bb.features(backbone, splits["val"].images, cache, f"{tag}-val",
                                                      progress=s.progress),
                                       splits["val"])
      cfg = feature_meta.head_config(method, steps=s.head_steps, seed=s.seed, ways=WAYS)
      cfg = cfg.replace(**{k: v for k, v in overrides.items() if k not in NETWORK_FIELDS}).validate()
      params, info = feature_meta.load_or_train_head(train, val, cfg, cache, f"{method}-{backbone.name}", s.progress)
      ctx.learners[(method, "pretrained")] = Learner(cfg, base_learning.FeatureHead(cfg.ways), params,
                                                     cfg.eval_inner_steps)
      identities[f"{method}/pretrained"] = (f"head meta-learned on {backbone.name} features of {tag} train "
                                            f"classes: {cfg.steps} steps, best val step {info['best']['step']}")
    else:
      workdir = given.get(method)
      if workdir is None:
        meta_splits()   # prepares the data (manual_dir) before the engine reads it
        cfg = meta_runs.scratch_config(method, dataset=s.dataset, data_dir=s.data_dir, manual_dir=s.manual_dir or "",
                                       image_folder=s.image_folder, split_seed=s.split_seed, spec=s.spec,
                                       seed=s.seed, steps=s.meta_steps, overrides=overrides)
        workdir = meta_runs.ensure_trained(cfg, os.path.join(s.out, "meta-train", f"{method}-scratch"), s.progress)
      if test_classes is not None:
        meta_runs.check_disjoint(workdir, test_classes)
      learner = load_learner(workdir)
      c = learner.config
      if (c.model, c.width, c.image_size) != (s.spec.model, s.spec.width, s.spec.image_size):
        print(f"note: {workdir} holds {c.model} width {c.width} at {c.image_size}px; base/ncm/linprobe "
              f"scratch use {s.spec.model} width {s.spec.width} at {s.spec.image_size}px (--scratch-model, "
              f"--width, --image-size): the scratch columns compare different networks", file=sys.stderr)
      step = _trained_step(workdir)
      ctx.learners[(method, "scratch")] = learner
      identities[f"{method}/scratch"] = meta_runs.identity(workdir, step)
  return identities


def _trained_step(workdir: str) -> int:
  import json
  path = os.path.join(workdir, "best.json")
  if os.path.exists(path):
    with open(path) as f:
      return int(json.load(f).get("step", -1))
  return -1


def execute(s: Settings, dataset: str, *, source: Optional[TaskSource] = None,
            backbone: Optional[bb.Backbone] = None, meta_splits_override: Optional[dict] = None,
            command: str = "") -> dict:
  """Runs one data set's grid (see the module docstring); returns a summary
  {"cells": new cells, "seconds": wall time, "paths": report files}."""
  start = time.time()
  cached: dict = {}

  def meta_splits():
    if meta_splits_override is not None:
      return meta_splits_override
    if "splits" not in cached:
      cached["splits"] = load_meta_splits(s)
    return cached["splits"]

  smi = load_smi(s, save=False) if dataset == "smi" and source is None else None
  source = source or load_source(s, dataset, meta_splits, smi)
  for k in s.shots:   # an impossible draw (too few images or patients) is refused before anything is written
    for r in range(s.repeats):
      try:
        source.draw(k, r)
      except UserError:
        raise
      except ValueError as e:   # the episode sampler's
        raise UserError(f"{source.name}: {k} shots, repeat {r}: {e}") from None
  columns = s.columns()
  fixed = fixed_settings(s, source)
  if backbone is not None:
    fixed["pretrained_backbone"] = backbone.name
  # Checked now, recorded (with the split) only once every column's model is
  # at hand: a run refused on the way leaves no settings that a corrected
  # rerun would then be refused for.
  st = store.ResultsStore(s.out)
  store.check_settings(s.out, dataset, fixed, {}, record=False)
  if smi is not None and smi[1] is not None:
    from maml_jax.experiment import xray_tasks
    xray_tasks.save_or_check(s.out, smi[1], write=False)
  todo_columns = [c for c in columns if any(not st.done((dataset, c[0], c[1], k, r))
                                            for k in s.shots for r in range(s.repeats))]
  ctx = Context(source, s.spec)
  if todo_columns:
    if any(b == "pretrained" for _, b in todo_columns):
      backbone = backbone or make_backbone(s, meta_splits)
      tag = f"{source.name}-{'synthetic' if source.synthetic else 'data'}"
      ctx.pretrained_features = bb.features(backbone, source.crops, os.path.join(s.out, "cache"), tag,
                                            progress=s.progress)
    test_classes = list(source_test_classes(meta_splits, dataset))
    identities = _meta_learners(s, todo_columns, ctx, meta_splits, backbone, test_classes, smi)
    if any(m in paper.AGE_METHODS for m, _ in todo_columns):
      ctx.age_model, ctx.age_boundaries, identities["age model"] = _age_model(s, smi, backbone, os.path.join(s.out, "cache"))
    predictors = {c: predictor(c[0], c[1], ctx) for c in todo_columns}
    if smi is not None and smi[1] is not None:
      from maml_jax.experiment import xray_tasks
      xray_tasks.save_or_check(s.out, smi[1])
    store.check_settings(s.out, dataset, fixed, identities)
    n = grid.run(source, todo_columns, predictors, st, shots=s.shots, repeats=s.repeats, seed=s.seed,
                 progress=s.progress)
  else:
    n = 0
  seconds = round(time.time() - start, 1)
  store.log_run(s.out, {"command": command, "dataset": dataset, "cells": n, "seconds": seconds,
                        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start))})
  paths = report.write(s.out)
  return {"cells": n, "seconds": seconds, "paths": paths}


def source_test_classes(meta_splits, dataset: str):
  """The meta-dataset's test class names (what meta-training must not have seen)."""
  if dataset != "metadataset":
    return ()
  return meta_splits()["test"].class_names
