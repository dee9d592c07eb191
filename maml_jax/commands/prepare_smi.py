"""`prepare-smi`: hand X-rays + label CSV (+ ROI centres) -> SMI shards.

Reads every image (PNG/JPEG, 8 or 16 bit; DICOM with the optional pydicom),
brings it to 512x512 keeping its aspect (the short side padded with black),
and cuts a 64x64 crop around each ROI centre (zero-padded at the borders).
The centres are found automatically (the default, `--rois auto`: the hand,
its fingertips and six joints: thumb_ip, middle_dip, ring_dip, middle_pip,
ring_pip, thumb_mcp; docs/smi-localisation.md), or read from your ROI CSV,
which always wins; `--rois whole` keeps one normalised 64x64 view of the whole
hand instead.  Labels are merged into the stage scheme, or cut from bone age
("bone-age stages", not the paper's SMI stages).  Writes NPZ shards with a
checksummed manifest (see `maml_jax.smi.shards`), plus `rois_found.csv` (the
centres located) and `excluded.csv` (images left out, and why).  Everything is
read and checked first; the output folder appears only when complete.
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
             image_id,boneage_months[,rsna_id,sex]  (no stage column): five
             bone-age stages at the ages' quintiles (--age-stages N for N);
             rsna_id serves as the patient id
ROI CSV:     long      image_id,roi,x,y         one row per image and ROI
             wide      image_id,roi1_x,roi1_y,roi2_x,roi2_y,...
             template  roi,x,y                  same centres for every image
             x = column, y = row, in original-image pixels (or 512x512 pixels
             with --coords resized).  A numeric roi n is named "roi<n>".

examples:
  python run.py prepare-smi --images xrays/ --labels labels.csv --out smi_shards/ --on-failure skip
  python run.py prepare-smi --images xrays/ --labels labels.csv --rois whole --out hand_shards/
  python run.py prepare-smi --images xrays/ --labels labels.csv --rois rois.csv --out smi_shards/
""")
  p.add_argument("--images", required=True, metavar="DIR", help="folder of X-ray images (not searched recursively)")
  p.add_argument("--labels", required=True, metavar="CSV", help="labels CSV (see above)")
  p.add_argument("--rois", default="auto", metavar="auto|whole|CSV",
                 help="auto: locate six finger-joint ROIs in each image (default); whole: one whole-hand view; "
                      "or a ROI-centre CSV: long, wide or template (see above)")
  p.add_argument("--on-failure", choices=("error", "skip"), default="error",
                 help="an image that cannot be read, or whose hand or joints cannot be found confidently: "
                      "stop with an error naming it (default), or leave it out and list it in excluded.csv")
  p.add_argument("--hand", choices=("auto", "left", "right"), default="auto",
                 help="auto: a right hand is found, mirrored and named as a left one (default); left/right: "
                      "every image shows this hand (bone-age radiographs are left hands), so a hand seen as the "
                      "other side is a mis-found thumb and is a failure")
  p.add_argument("--preview", metavar="DIR",
                 help="write overlay PNGs (image, boxes, ROI names) for a sample and for every failed image, "
                      "plus contact_sheet.png")
  p.add_argument("--preview-count", type=int, default=24, metavar="N",
                 help="how many located images --preview draws besides the failures (default %(default)s)")
  p.add_argument("--age-stages", type=int, default=5, metavar="N",
                 help="bone-age stages at the ages' N-quantiles when the labels have no stage column "
                      "(default %(default)s)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (and --preview) folder")
  p.set_defaults(func=main)
  return p


def main(args) -> int:
  import dataclasses
  from maml_jax import io as files
  from maml_jax.smi import prepare, shards
  from maml_jax.smi.errors import SMIDataError

  if args.shard_size < 1:
    raise SMIDataError(f"--shard-size must be >= 1, got {args.shard_size}")
  for option, folder in (("--out", args.out), ("--preview", args.preview)):
    if folder:
      files.check_output_dir(folder, option, args.overwrite)
  ages = None
  if args.age_boundaries:
    try:
      ages = [float(a) for a in args.age_boundaries.split(",")]
    except ValueError:
      raise SMIDataError(f"--age-boundaries {args.age_boundaries!r}: expected comma-separated numbers") from None
  if args.age_stages < 2:
    raise SMIDataError(f"--age-stages must be >= 2, got {args.age_stages}")
  data, summary = prepare.build(args.images, args.labels, args.rois, coords=args.coords, stages=args.stages,
                                mapping=args.mapping, age_boundaries=ages, label_column=args.label_column,
                                on_failure=args.on_failure, progress=not args.no_progress,
                                age_stages=args.age_stages, hand=args.hand)
  synthetic = args.synthetic or os.path.isfile(os.path.join(args.images, "SYNTHETIC.txt"))
  data = dataclasses.replace(data, synthetic=synthetic)
  with files.atomic_dir(args.out, overwrite=args.overwrite) as tmp:
    extra = {"rois_mode": args.rois if args.rois in prepare.ROI_MODES else "csv",
             "image_resize": "aspect kept: long side 512, short side zero-padded (centred)",
             "excluded": len(summary.excluded)}
    shards.write_shards(tmp, data, shard_size=args.shard_size, extra=extra)
    prepare.write_side_tables(tmp, summary)
  if args.preview:
    from maml_jax.smi import preview
    sheet = preview.write_previews(args.preview, args.images, summary, count=args.preview_count,
                                   overwrite=args.overwrite)
    print(f"wrote previews to {args.preview} (contact sheet {sheet})")
  print(f"wrote {args.out}: {shards.describe(data)}")
  scheme = data.label_scheme
  kind = "bone-age stage" if scheme.get("kind") == "bone_age_stages" else "stage"
  if kind == "bone-age stage":
    print(f"labels: bone-age stages ({scheme['how']}; NOT the paper's SMI stages)")
  print("images per class:")
  for i, (c, n) in enumerate(zip(summary.classes, summary.counts)):
    rng = f" ({scheme['stage_ranges'][i]})" if "stage_ranges" in scheme else ""
    print(f"  {kind} {c}{rng}: {n}")
  for note in summary.notes[:10]:
    print(f"note: {note}")
  if len(summary.notes) > 10:
    print(f"note: ... {len(summary.notes) - 10} more (see rois_found.csv)")
  if summary.excluded:
    print(f"excluded {len(summary.excluded)} image(s) (listed in {os.path.join(args.out, 'excluded.csv')}):")
    for image_id, _, roi, reason in summary.excluded[:20]:
      print(f"  {image_id}: {roi + ': ' if roi else ''}{reason}")
    if len(summary.excluded) > 20:
      print(f"  ... {len(summary.excluded) - 20} more")
  empty = [c for c, n in zip(summary.classes, summary.counts) if n == 0]
  if empty:
    print(f"warning: stage(s) {', '.join(empty)} have no images; `adapt` needs shots + queries images "
          "in every stage")
  print(f"ROIs: {', '.join(data.roi_names)}")
  if summary.skipped_unlabelled:
    print(f"skipped {len(summary.skipped_unlabelled)} image(s) without a label row, e.g. "
          f"{summary.skipped_unlabelled[0]!r} (listed in excluded.csv)")
  return 0
