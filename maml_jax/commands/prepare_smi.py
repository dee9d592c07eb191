"""`prepare-smi`: hand X-rays + label CSV + ROI-centre CSV -> SMI shards.

Reads every image (PNG/JPEG, 8 or 16 bit; DICOM with the optional pydicom),
brings it to 512x512, cuts a 64x64 crop around each ROI centre (zero-padded at
the borders), merges the stages into the label scheme, and writes NPZ shards
with a checksummed manifest (see `maml_jax.smi.shards`).  Everything is read
and checked first; the output folder appears only when complete.
"""
from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser(
      "prepare-smi", help="build SMI ROI shards from hand X-rays, a label CSV and ROI centres",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=__doc__ + """
label CSV:   image_id,stage[,patient_id,sex,age_months]   (image_id = file name
             without extension; stage 1..11 by default, see --stages/--mapping;
             or labels from age_months with --age-boundaries)
ROI CSV:     long      image_id,roi,x,y         one row per image and ROI
             wide      image_id,roi1_x,roi1_y,roi2_x,roi2_y,...
             template  roi,x,y                  same centres for every image
             x = column, y = row, in original-image pixels (or 512x512 pixels
             with --coords resized).  A numeric roi n is named "roi<n>".

example:
  python run.py prepare-smi --images xrays/ --labels labels.csv --rois rois.csv --out smi_shards/
""")
  p.add_argument("--images", required=True, metavar="DIR", help="folder of X-ray images (not searched recursively)")
  p.add_argument("--labels", required=True, metavar="CSV", help="labels CSV (see above)")
  p.add_argument("--rois", required=True, metavar="CSV", help="ROI centres: long, wide or template CSV (see above)")
  p.add_argument("--out", required=True, metavar="DIR", help="output shard folder")
  p.add_argument("--coords", choices=("original", "resized"), default="original",
                 help="ROI centres are in original-image pixels (default) or in the 512x512 resized image")
  p.add_argument("--stages", choices=("11", "5"), default="11",
                 help="11: stages 1..11 merged as in the paper ({1,2}->1, {3,4}->2, {5,6}->3, {7,8,9}->4, "
                      "{10,11}->5); 5: stages already 1..5 (default: %(default)s)")
  p.add_argument("--mapping", metavar="MAP", help="your own merge, e.g. '1,2:1;3,4:2;5,6:3;7,8,9:4;10,11:5'")
  p.add_argument("--age-boundaries", metavar="AGES",
                 help="label by age instead: comma-separated ages in months where stage 2, 3, ... begin "
                      "(reads the age_months column)")
  p.add_argument("--label-column", default="stage", help="name of the stage column (default: %(default)s)")
  p.add_argument("--shard-size", type=int, default=256, metavar="N", help="images per shard (default %(default)s)")
  p.add_argument("--synthetic", action="store_true",
                 help="mark the shards as synthetic (automatic when the image folder has SYNTHETIC.txt, "
                      "as `make-smi-demo --images` writes)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
  p.set_defaults(func=main)
  return p


def main(args) -> int:
  import dataclasses
  from maml_jax import io as files
  from maml_jax.smi import prepare, shards
  from maml_jax.smi.errors import SMIDataError

  if args.shard_size < 1:
    raise SMIDataError(f"--shard-size must be >= 1, got {args.shard_size}")
  if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
    raise SMIDataError(f"{args.out}: the output folder exists and is not empty (pass --overwrite to replace it)")
  ages = None
  if args.age_boundaries:
    try:
      ages = [float(a) for a in args.age_boundaries.split(",")]
    except ValueError:
      raise SMIDataError(f"--age-boundaries {args.age_boundaries!r}: expected comma-separated numbers") from None
  data, summary = prepare.build(args.images, args.labels, args.rois, coords=args.coords, stages=args.stages,
                                mapping=args.mapping, age_boundaries=ages, label_column=args.label_column)
  synthetic = args.synthetic or os.path.isfile(os.path.join(args.images, "SYNTHETIC.txt"))
  data = dataclasses.replace(data, synthetic=synthetic)
  with files.atomic_dir(args.out, overwrite=args.overwrite) as tmp:
    shards.write_shards(tmp, data, shard_size=args.shard_size)
  print(f"wrote {args.out}: {shards.describe(data)}")
  print("images per class:")
  for c, n in zip(summary.classes, summary.counts):
    print(f"  stage {c}: {n}")
  empty = [c for c, n in zip(summary.classes, summary.counts) if n == 0]
  if empty:
    print(f"warning: stage(s) {', '.join(empty)} have no images; `adapt` needs shots + queries images "
          "in every stage")
  print(f"ROIs: {', '.join(data.roi_names)}")
  if summary.skipped_unlabelled:
    print(f"skipped {len(summary.skipped_unlabelled)} image(s) without a label row, e.g. "
          f"{summary.skipped_unlabelled[0]!r}")
  return 0
