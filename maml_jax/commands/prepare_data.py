"""`prepare-data`: builds CIFAR-100 and/or Tiny ImageNet into the TFDS data directory.

Done once per machine; every later command reads the prepared array_record
files with `tfds.data_source` (no TensorFlow).  CIFAR-100 is downloaded, or
read offline from `cifar-100-binary.tar.gz` in --manual-dir; building it needs
TensorFlow (optional extra).  Tiny ImageNet is always read from
`tiny-imagenet-200.zip` (or the extracted `tiny-imagenet-200/`) in --manual-dir
and needs no TensorFlow.
"""
from __future__ import annotations

import argparse
import time

PREPARABLE = ("cifar100", "tinyimagenet")


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser(
      "prepare-data",
      help="build CIFAR-100 / Tiny ImageNet into the TFDS data directory (once)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Builds the natural-image datasets of the paper's meta-dataset as TFDS\n"
          "array_record datasets, read later without TensorFlow.\n\n"
          "  cifar100      downloads cifar-100-binary.tar.gz, or reads it from --manual-dir\n"
          "                (168,513,733 bytes, sha256-checked); needs TensorFlow to build:\n"
          "                pip install '.[prepare]'  (or pip install tensorflow)\n"
          "  tinyimagenet  reads tiny-imagenet-200.zip (or tiny-imagenet-200/) from\n"
          "                --manual-dir; get it from http://cs231n.stanford.edu/tiny-imagenet-200.zip\n"
          "                (ImageNet terms); needs no TensorFlow\n\n"
          "Already prepared datasets are left as they are."),
      epilog="example: python run.py prepare-data --dataset cifar100 --dataset tinyimagenet "
             "--manual-dir ~/archives")
  p.add_argument("--dataset", action="append", choices=PREPARABLE, required=True,
                 help="dataset to prepare; repeat for both")
  p.add_argument("--manual-dir", metavar="DIR", default=None,
                 help="folder with the archives (cifar-100-binary.tar.gz, tiny-imagenet-200.zip); "
                      "default: TFDS's <data-dir>/downloads/manual")
  p.add_argument("--data-dir", metavar="DIR", default=None,
                 help="TFDS data directory to build into (default: $TFDS_DATA_DIR or "
                      "~/tensorflow_datasets); pass the same --data-dir to later commands")
  p.set_defaults(func=main)
  return p


def prepare(name: str, manual_dir: str | None, data_dir: str | None):
  """Prepares one dataset; returns its TFDS builder."""
  if name == "cifar100":
    from maml_jax.data import cifar100
    return cifar100.prepare_cifar100(data_dir, manual_dir)
  if name == "tinyimagenet":
    from maml_jax.data import tinyimagenet
    return tinyimagenet.prepare_tinyimagenet(data_dir, manual_dir)
  raise ValueError(f"cannot prepare {name!r}; choose from {PREPARABLE}")


def main(args) -> int:
  for name in dict.fromkeys(args.dataset):
    start = time.time()
    b = prepare(name, args.manual_dir, args.data_dir)
    splits = ", ".join(f"{k} {v.num_examples:,}" for k, v in b.info.splits.items())
    print(f"{name}: {splits} examples, {b.info.features['label'].num_classes} classes, "
          f"in {b.data_dir} ({time.time() - start:.0f} s)")
  return 0
