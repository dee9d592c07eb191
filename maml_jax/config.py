"""Run configuration: one frozen dataclass, named presets, command-line overrides.

Every field can be set from the command line (`--inner-lr 0.1`); `--help`
prints each field's help text.  Presets hold published or measured settings;
`tiny` is for tests.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import field
from typing import Any

from maml_jax.errors import UserError


PRECISIONS = ("float32", "bfloat16")


class ConfigError(UserError):
  """Settings that cannot run (the message lists every problem)."""


def _f(default, help: str, **kw):
  return field(default=default, metadata={"help": help, **kw})


# Sizes past which a run could not fit any accelerator's or host's memory: refused
# up front, rather than failing in an allocation deep inside data loading.
MAX_IMAGE_SIZE = 2048
MAX_BATCH_GIB = 16


@dataclasses.dataclass(frozen=True)
class Config:
  """One run's settings.  `Config()` is the *base*: MAML's published Omniglot
  settings, which the presets start from; the default job (`meta-train`
  without options) is the `default` preset, not `Config()`."""
  # data
  dataset: str = _f("omniglot", "meta-training data: omniglot, synthetic, or a '+'-joined subset of "
                    "cifar100, tinyimagenet, omniglot, folder (the paper's meta-dataset)")
  data_dir: str = _f("", "where the source data lies: the Omniglot folder (default: the embedded zips) or the "
                     "TFDS data directory of cifar100/tinyimagenet (default: TFDS's)")
  manual_dir: str = _f("", "folder with the downloaded archives (tiny-imagenet-200.zip, cifar-100-binary.tar.gz); "
                       "a TFDS dataset not yet prepared is prepared from it on first use")
  image_folder: str = _f("", "root/<class>/<images> for the 'folder' dataset (your own images)")
  image_size: int = _f(28, "images are brought to image_size x image_size")
  channels: int = _f(1, "1 (grayscale) or 3 (RGB)")
  split_seed: int = _f(1, "seed of the class-level meta-train/val/test split")
  split: str = _f("standard", "Omniglot split: standard (1200 characters of both zips for meta-training, the "
                  "rest for test) or lake (meta-train and validate on images_background only, test on "
                  "images_evaluation)")
  within_alphabet: bool = _f(False, "Omniglot: draw each episode's characters from one alphabet")
  on_device_data: bool = _f(True, "keep the meta-training images on the accelerator and draw episodes there")
  # episodes
  ways: int = _f(5, "classes per task (N-way)")
  shots: int = _f(1, "support images per class (K-shot)")
  queries: int = _f(15, "query images per class during meta-training")
  eval_queries: int = _f(15, "query images per class during validation and test")
  tasks: int = _f(32, "tasks per meta-batch")
  # model
  model: str = _f("conv4", "network: conv4, conv4-pool, scratch7, vgg16, tiny")
  width: float = _f(1.0, "multiplies the filter counts")
  conv_impl: str = _f("auto", "convolution formulation: gemm, xla, or auto (fastest on this backend)")
  precision: str = _f("float32", "compute precision: float32, or bfloat16 (mixed: activations and "
                      "convolutions in bfloat16; parameters, optimizer state, batch-norm statistics and the "
                      "softmax loss in float32; for GPUs)")
  # algorithm
  algorithm: str = _f("maml", "meta-learning algorithm: maml, anil, reptile or protonet (maml_jax/algorithms/; "
                      "settings an algorithm does not use are refused)")
  # inner loop
  inner_steps: int = _f(1, "inner SGD steps during meta-training")
  eval_inner_steps: int = _f(3, "inner SGD steps during validation, test and adaptation")
  inner_lr: float = _f(0.4, "inner learning rate (initial value when learned)")
  learn_inner_lr: bool = _f(False, "learn one inner learning rate per parameter tensor and inner step "
                            "(MAML++'s per-layer per-step rates, LSLR)")
  inner_lr_per_element: bool = _f(False, "learn one inner learning rate per parameter element, shared by the "
                                  "inner steps (Meta-SGD); excludes --learn-inner-lr")
  first_order: bool = _f(False, "first-order MAML: no gradient through the inner gradients")
  first_order_until: int = _f(0, "derivative-order annealing (MAML++): first order for meta-batches before "
                              "this one, second order from it on (0 = off)")
  multi_step_loss: bool = _f(False, "multi-step loss (MAML++): weighted sum of the query losses after every "
                             "inner step, the weights annealed towards the last step over --msl-epochs")
  msl_epochs: int = _f(1000, "meta-batches over which the multi-step loss weights anneal to the last step "
                       "(the last step alone after them)")
  per_step_bn: bool = _f(False, "per-step batch-norm scale and shift (MAML++): each inner step has its own; "
                         "statistics are always the current batch's")
  remat: bool = _f(False, "recompute each inner step in the backward pass (less memory, more compute)")
  inner_unroll: int = _f(0, "inner steps per scan iteration when meta-training: 0 = auto (all, up to 8, "
                         "without remat; else 1)")
  task_map: str = _f("auto", "how tasks are batched: vmap, map (lax.map), or auto (fastest on this backend)")
  query_bn: str = _f("batch", "batch-norm statistics for queries: batch (MAML's convention: the query batch) "
                     "or support (the support set's, so each query is classified on its own)")
  adapt_bn: bool = _f(True, "whether batch-norm scale and shift adapt in the inner loop")
  inner_mask: str = _f("", "regex over parameter paths (e.g. 'head') that the inner loop adapts; empty = all")
  outer_mask: str = _f("", "regex over parameter paths that the meta-optimizer updates; empty = all")
  # outer loop
  meta_lr: float = _f(1e-3, "Adam learning rate of the meta-update")
  lr_schedule: str = _f("constant", "meta learning-rate schedule: constant or cosine")
  clip_norm: float = _f(10.0, "global-norm clipping of the meta-gradient (0 = off)")
  steps: int = _f(60000, "meta-batches to train on")
  seed: int = _f(0, "seed of initialisation and episode sampling")
  time_budget: float = _f(0.0, "minutes of wall clock this invocation may run (set-up included); when spent, "
                          "the run stops after the current step with a checkpoint, and --resume continues "
                          "it (0 = no limit)")
  # bookkeeping
  log_every: int = _f(50, "steps between metric logs (the only host syncs)")
  val_every: int = _f(1000, "steps between validations (0 = never)")
  monitor_test: bool = _f(False, "also evaluate the meta-test episodes at each validation, for time-to-accuracy "
                          "curves (logged only; model selection uses validation alone)")
  val_episodes: int = _f(300, "episodes per validation")
  test_episodes: int = _f(600, "meta-test episodes of the final evaluation")
  checkpoint_every: int = _f(1000, "steps between checkpoints")
  keep_checkpoints: int = _f(3, "latest checkpoints kept (the best is kept too)")
  keep_best: int = _f(1, "best checkpoints kept by validation accuracy (ties: the earlier step), for the "
                      "top-K ensemble at test (MAML++): `evaluate --ensemble K`, --test-ensemble")
  test_ensemble: int = _f(1, "the final meta-test scores the ensemble of the top-K checkpoints by validation: "
                          "each adapted, query class probabilities averaged (1 = the best alone; at most "
                          "keep_best)")

  def replace(self, **kw) -> "Config":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Config":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ConfigError(f"unknown config fields: {sorted(unknown)}")
    types = {"int": int, "float": (int, float), "str": str, "bool": bool}
    for f in dataclasses.fields(cls):
      if f.name in d and (not isinstance(d[f.name], types[str(f.type)]) or
                          (str(f.type) != "bool" and isinstance(d[f.name], bool))):
        raise ConfigError(f"config field {f.name!r} must be {f.type}, got {d[f.name]!r}")
    return cls(**d)

  def validate(self) -> "Config":
    """Returns self, or raises ConfigError listing every setting that cannot be valid."""
    from maml_jax import algorithms   # (lazy: each imports the config)
    from maml_jax.data.metadataset import DATASETS
    from maml_jax.models import MODELS
    problems = []
    if self.ways < 2: problems.append(f"ways={self.ways} must be >= 2")
    if self.shots < 1: problems.append(f"shots={self.shots} must be >= 1")
    if self.queries < 1 or self.eval_queries < 1: problems.append("queries and eval_queries must be >= 1")
    if self.tasks < 1: problems.append(f"tasks={self.tasks} must be >= 1")
    if self.inner_steps < 0 or self.eval_inner_steps < 0: problems.append("inner step counts must be >= 0")
    if self.inner_unroll < 0: problems.append(f"inner_unroll={self.inner_unroll} must be >= 0 (0 = auto)")
    if self.channels not in (1, 3): problems.append(f"channels={self.channels} must be 1 or 3")
    if self.task_map not in ("auto", "vmap", "map"): problems.append(f"task_map={self.task_map!r}")
    if self.conv_impl not in ("auto", "gemm", "xla"): problems.append(f"conv_impl={self.conv_impl!r}")
    if self.query_bn not in ("batch", "support"): problems.append(f"query_bn={self.query_bn!r}")
    if self.lr_schedule not in ("constant", "cosine"): problems.append(f"lr_schedule={self.lr_schedule!r}")
    if self.split not in ("standard", "lake"): problems.append(f"split={self.split!r} is not standard or lake")
    if self.precision not in PRECISIONS:
      problems.append(f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
    if not (math.isfinite(self.time_budget) and self.time_budget >= 0):
      problems.append(f"time_budget={self.time_budget} must be a finite number of minutes >= 0 (0 = no limit)")
    if (self.split == "lake" or self.within_alphabet) and self.dataset != "omniglot":
      problems.append("split=lake and within_alphabet apply to dataset=omniglot only")
    if self.learn_inner_lr and self.inner_lr_per_element:
      problems.append("learn_inner_lr (per-layer per-step) and inner_lr_per_element (per-element) exclude "
                      "each other")
    if self.first_order_until < 0: problems.append(f"first_order_until={self.first_order_until} must be >= 0")
    if self.msl_epochs < 1: problems.append(f"msl_epochs={self.msl_epochs} must be >= 1")
    if self.model not in MODELS: problems.append(f"model={self.model!r} is not one of {', '.join(MODELS)}")
    bad = [n for n in self.dataset.split("+") if n not in DATASETS]
    # "features": precomputed backbone features (the experiment grid's pretrained heads);
    # "smi": SMI shards' ROI crops as frozen features (the xray preset).
    if self.dataset not in ("omniglot", "synthetic", "features", "smi") and (bad or not self.dataset):
      problems.append(f"dataset={self.dataset!r}: {', '.join(map(repr, bad)) or 'empty'} is not one of "
                      f"omniglot, synthetic, or a '+'-joined subset of {', '.join(DATASETS)}")
    # Counts and sizes that must be positive (0 would divide by zero or do nothing).
    for name in ("image_size", "steps", "log_every", "checkpoint_every", "keep_checkpoints", "val_episodes",
                 "test_episodes", "keep_best", "test_ensemble"):
      if getattr(self, name) < 1: problems.append(f"{name}={getattr(self, name)} must be >= 1")
    if self.val_every < 0: problems.append(f"val_every={self.val_every} must be >= 0 (0 = never)")
    if self.image_size > MAX_IMAGE_SIZE:
      problems.append(f"image_size={self.image_size} is over {MAX_IMAGE_SIZE} (one {self.image_size}x"
                      f"{self.image_size} image alone is {self.image_size ** 2 * self.channels * 4 / 2**30:.1f} "
                      f"GiB as float32)")
    else:
      images = self.tasks * self.ways * (self.shots + max(self.queries, self.eval_queries))
      gib = images * self.image_size ** 2 * self.channels * 4 / 2**30
      if gib > MAX_BATCH_GIB:
        problems.append(f"a meta-batch of {images} images at {self.image_size}x{self.image_size}x{self.channels} "
                        f"is {gib:.1f} GiB as float32, over {MAX_BATCH_GIB} GiB before any activation: lower "
                        f"image_size, tasks, ways, shots or queries")
    validations = math.ceil(self.steps / self.val_every) if self.val_every > 0 else 0
    if self.test_ensemble > self.keep_best:
      problems.append(f"test_ensemble={self.test_ensemble} needs keep_best >= {self.test_ensemble} (it is "
                      f"{self.keep_best})")
    elif self.test_ensemble > max(validations, 1):
      problems.append(f"test_ensemble={self.test_ensemble} needs as many validations; val_every={self.val_every} "
                      f"over steps={self.steps} makes {validations}")
    for f in dataclasses.fields(self):   # array sizes and counters are int32 on the device
      v = getattr(self, f.name)
      if str(f.type) == "int" and not -2**31 < v < 2**31:
        problems.append(f"{f.name}={v} is out of range")
    if not (math.isfinite(self.width) and self.width > 0): problems.append(f"width={self.width} must be > 0")
    for name in ("meta_lr", "inner_lr"):
      v = getattr(self, name)
      if not (math.isfinite(v) and v > 0): problems.append(f"{name}={v} must be a finite number > 0")
    if not (math.isfinite(self.clip_norm) and self.clip_norm >= 0):
      problems.append(f"clip_norm={self.clip_norm} must be a finite number >= 0 (0 = off)")
    for name in ("inner_mask", "outer_mask"):
      try:
        re.compile(getattr(self, name))
      except re.error as e:
        problems.append(f"{name}={getattr(self, name)!r} is not a regular expression ({e})")
    if not problems:   # (an algorithm's own checks assume settings that are valid on their own)
      problems += algorithms.problems(self)
    if problems:
      raise ConfigError("invalid configuration: " + "; ".join(problems))
    return self


# MAML's published Omniglot settings (Finn et al. 2017): meta-batch 32 (16 for
# 20-way), inner lr 0.4 with 1 step (0.1 with 5 steps for 20-way), Adam 1e-3,
# 60,000 meta-batches, 3 inner steps at test time (5 for 20-way).
_OMNIGLOT = Config()   # the base
PRESETS: dict[str, Config] = {
    # The default job: Omniglot 5-way 1-shot sized for about ten minutes on a
    # CPU.  On a fixed time budget, many small meta-batches (4 tasks, 5 queries
    # per class) beat fewer large ones: on a CPU a meta-batch costs mostly per
    # task, and more updates learn faster.  Learned per-tensor per-step inner
    # learning rates (MAML++'s LSLR) speed up the start further.  (Measurements:
    # docs/omniglot.md.)
    "default": _OMNIGLOT.replace(steps=9500, tasks=4, queries=5, learn_inner_lr=True, meta_lr=3e-3,
                                 lr_schedule="cosine", val_every=500, val_episodes=200,
                                 checkpoint_every=500, log_every=50),
    "omniglot-5w1s": _OMNIGLOT.replace(queries=1),
    "omniglot-5w5s": _OMNIGLOT.replace(shots=5, queries=5),
    "omniglot-20w1s": _OMNIGLOT.replace(ways=20, queries=1, tasks=16, inner_steps=5, inner_lr=0.1,
                                        eval_inner_steps=5),
    # Lake et al.'s one-shot protocol: 20-way 1-shot, background alphabets for
    # meta-training, evaluation alphabets for test, episodes within one alphabet.
    "omniglot-20w1s-lake": _OMNIGLOT.replace(ways=20, queries=1, tasks=16, inner_steps=5, inner_lr=0.1,
                                             eval_inner_steps=5, split="lake", within_alphabet=True),
    "omniglot-20w5s": _OMNIGLOT.replace(ways=20, shots=5, queries=5, tasks=16, inner_steps=5,
                                        inner_lr=0.1, eval_inner_steps=5),
    # The paper's settings (Min & Kang 2018) on CIFAR-100 + Tiny ImageNet at the
    # SMI target's 64x64 grayscale.  See docs/results.md for the choice of the open
    # hyper-parameters.
    "paper-scratch": Config(dataset="cifar100+tinyimagenet", image_size=64, channels=1, split_seed=0,
                            ways=5, shots=20, queries=15, eval_queries=15, tasks=2, model="scratch7",
                            inner_steps=5, eval_inner_steps=10, inner_lr=0.01, meta_lr=1e-3, remat=True,
                            steps=10000, val_every=500, val_episodes=100, test_episodes=600,
                            checkpoint_every=250, log_every=10),
    "paper-pretrained": Config(dataset="cifar100+tinyimagenet", image_size=64, channels=1, split_seed=0,
                               ways=5, shots=20, queries=15, eval_queries=15, tasks=2, model="vgg16",
                               inner_steps=5, eval_inner_steps=10, inner_lr=0.01, meta_lr=1e-3,
                               inner_mask="head", outer_mask="head", remat=True,
                               steps=10000, val_every=500, val_episodes=100, test_episodes=600,
                               checkpoint_every=250, log_every=10),
    # The X-ray model (`maml_jax.smi.xray_model`): the paper's 3x256 head,
    # meta-learned with second-order MAML on frozen EfficientNet-Lite0 features
    # of hand-radiograph ROI crops (at 64 px), tasks over bone-age bins of the
    # training patients.  A "shot" is one ROI crop: 30 = 5 radiographs x 6 ROIs.
    # The inner loop settings are paper-pretrained's; the budget fits a CPU.
    "xray": Config(dataset="smi", model="effnet_head", image_size=64, channels=1, split_seed=0,
                   ways=5, shots=30, queries=15, eval_queries=15, tasks=2,
                   inner_steps=5, eval_inner_steps=10, inner_lr=0.01, meta_lr=1e-3,
                   inner_mask="head", steps=600, val_every=100, val_episodes=100, test_episodes=600,
                   checkpoint_every=100, log_every=10),
    # For tests: seconds on a CPU, synthetic data.
    "tiny": Config(dataset="synthetic", image_size=12, model="tiny", ways=3, shots=1, queries=2,
                   eval_queries=2, tasks=2, inner_steps=1, eval_inner_steps=2, steps=4, log_every=2,
                   val_every=2, val_episodes=4, test_episodes=6, checkpoint_every=2, keep_checkpoints=2),
}


def get_preset(name: str) -> Config:
  if name not in PRESETS:
    raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name]


def _bool(text: str) -> bool:
  if text.lower() not in ("true", "false", "1", "0"):
    raise ValueError(text)
  return text.lower() in ("true", "1")


# Command-line text -> a field's value, by the field's type (the one parser).
FIELD_PARSERS = {"int": int, "float": float, "str": str, "bool": _bool}


def parse_field(name: str, text: str) -> Any:
  """The value of Config field `name` from text ('5', '0.1', 'true'); ValueError if it does not parse."""
  return FIELD_PARSERS[str({f.name: f for f in dataclasses.fields(Config)}[name].type)](text)


def add_config_args(parser: argparse.ArgumentParser) -> None:
  """Adds `--preset` and one `--field-name` option per Config field."""
  parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                      help="named settings to start from (default: %(default)s)")
  g = parser.add_argument_group("settings (each overrides the preset)")
  for f in dataclasses.fields(Config):
    flags = ["--" + f.name.replace("_", "-")] + (["--datasets"] if f.name == "dataset" else [])
    if f.type in ("bool", bool):
      g.add_argument(*flags, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                     help=f.metadata["help"])
    else:
      typ = FIELD_PARSERS[str(f.type)]
      g.add_argument(*flags, dest=f.name, type=typ, default=None, metavar=typ.__name__.upper(),
                     help=f.metadata["help"] + f" (default: preset's, {f.default!r} in the base)")


def config_from_args(args: argparse.Namespace) -> Config:
  """The preset with every option given on the command line applied, under the
  algorithm they name (`maml_jax.algorithms.configure`)."""
  from maml_jax import algorithms
  over = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
          if getattr(args, f.name, None) is not None}
  return algorithms.configure(get_preset(args.preset), over).validate()
