"""`make-smi-demo`: writes the SYNTHETIC skeletal-maturity demo data.

865 generated images x 6 epiphysis-like 64x64 ROI crops, classes shaped like
the paper's (333, 345, 58, 88, 41), as a shard folder (what `adapt` uses when
no --data is given; it is cached there automatically).  Optionally also as
512x512 PNG files with labels.csv and rois.csv, to try `prepare-smi` and
`predict` on, and a preview montage.  Drawings, not X-rays: labelled
synthetic everywhere.
"""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser("make-smi-demo", help="write the SYNTHETIC SMI demo data (shards, optional PNGs)",
                            description=__doc__)
  p.add_argument("--out", metavar="DIR", help="shard folder (default: the cache that `adapt` reads, "
                                               "$MAML_JAX_CACHE, else ~/.cache/maml_jax)")
  p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
  p.add_argument("--images", metavar="DIR", help="also write 512x512 PNGs + labels.csv + rois.csv here")
  p.add_argument("--limit", type=int, default=0, metavar="N", help="with --images: the first N images only")
  p.add_argument("--preview", metavar="PNG", help="write a montage of ROI crops by stage")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out or --images folder, or an "
                 "existing --preview file")
  p.set_defaults(func=main)
  return p


def main(args) -> int:
  from maml_jax.smi import demo_images, shards, synthetic

  from maml_jax import io as files
  if args.out:
    files.check_output_dir(args.out, "--out", args.overwrite)
  if args.images:
    files.check_output_dir(args.images, "--images", args.overwrite)
  if args.preview:
    files.check_output_file(args.preview, "--preview", args.overwrite)
  out = args.out or synthetic.demo_dir(args.seed)
  data = synthetic.write_demo(out, args.seed, overwrite=args.overwrite or not args.out)
  print(f"wrote {out}: {shards.describe(data)}")
  if args.images:
    n = demo_images.write_demo_images(args.images, data, args.limit, args.seed)
    print(f"wrote {n} SYNTHETIC PNG images with labels.csv and rois.csv to {args.images}; try\n"
          f"  python run.py prepare-smi --images {args.images} --labels {args.images}/labels.csv "
          f"--rois {args.images}/rois.csv --stages 5 --out OUT")
  if args.preview:
    demo_images.preview(data, args.preview)
    print(f"wrote {args.preview}")
  return 0
