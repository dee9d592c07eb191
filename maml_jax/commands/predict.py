"""`predict`: stages new hand X-rays with a model kept by `adapt --save`.

Cuts the ROIs of each image as `prepare-smi` does (512x512 with the aspect
kept, 64x64 crops around the centres in the ROI CSV or, without one, around
the joints located automatically; or the whole-hand view for a model adapted
on `--rois whole` shards), classifies every ROI with the adapted
network (batch-norm statistics from the saved support crops), and combines
the ROI votes.  Prints, per image, the stage, the stage probabilities
(averaged over ROIs) and each ROI's vote; --csv writes the same as a table.
"""
from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser(
      "predict", help="stage hand X-rays with a model saved by `adapt --save`",
      formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
examples:
  python run.py predict --model smi_model/ --image x.png --preview boxes/
  python run.py predict --model smi_model/ --image x.png --rois rois.csv
  python run.py predict --model smi_model/ --images xrays/ --rois rois.csv --csv stages.csv
The ROI CSV has the forms `prepare-smi` reads (long, wide, or a template
`roi,x,y` for registered images); image_id is the file name without extension.
""")
  p.add_argument("--model", required=True, metavar="DIR", help="a folder written by `adapt --save`")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--image", metavar="FILE", help="one X-ray image")
  src.add_argument("--images", metavar="DIR", help="a folder of X-ray images")
  p.add_argument("--rois", metavar="CSV", help="ROI centres (long, wide or template CSV); without it the "
                 "ROIs are located automatically (models with the six joint ROIs or the whole hand)")
  p.add_argument("--preview", metavar="DIR", help="write each image with its located boxes and names as a PNG")
  p.add_argument("--hand", choices=("auto", "left", "right"), default="auto",
                 help="as in prepare-smi: auto finds and mirrors a right hand; left/right fixes the side")
  p.add_argument("--coords", choices=("original", "resized"), default="original",
                 help="ROI centres in original-image pixels (default) or in the 512x512 resized image")
  p.add_argument("--rule", choices=("majority", "average", "weighted"), default="majority",
                 help="how ROI predictions are combined (default: %(default)s, the paper's rule)")
  p.add_argument("--csv", metavar="OUT", help="also write the predictions to this CSV")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file or non-empty --preview "
                 "folder")
  p.set_defaults(func=main)
  return p


def _centres_for(image_id, per_image, names, template, model_rois, csv_path):
  from maml_jax.smi.errors import SMIDataError
  import numpy as np
  missing = [r for r in model_rois if r not in names]
  if missing:
    raise SMIDataError(f"{csv_path}: ROI(s) {missing} of the model are missing (the CSV has {list(names)})")
  order = [names.index(r) for r in model_rois]
  if per_image is None:
    return np.asarray(template)[order]
  if image_id not in per_image:
    raise SMIDataError(f"{csv_path}: no ROI centres for image {image_id!r}")
  return per_image[image_id][order]


def _located(paths: dict, roi_names, preview_dir, hand="auto"):
  """uint8 [k, R, 64, 64] crops cut where `prepare-smi --rois auto|whole` would cut them."""
  import numpy as np
  from maml_jax import io as files
  from maml_jax.smi import prepare, preview
  from maml_jax.smi import localize as loc
  from maml_jax.smi.errors import SMIDataError
  mode = "auto" if tuple(roi_names) == loc.JOINT_ROIS else "whole" if tuple(roi_names) == loc.WHOLE_ROIS else None
  if mode is None:
    raise SMIDataError(f"the model's ROIs {list(roi_names)} are not ones this program can locate "
                       f"({list(loc.JOINT_ROIS)} or {list(loc.WHOLE_ROIS)}): pass --rois with their centres")
  crops, found = [], {}
  for image_id, path in paths.items():
    crop, f = prepare._cut(path, mode, None, "original", roi_names, hand)
    crops.append(crop)
    found[image_id] = f
    if f.note:
      print(f"note: {image_id}: {f.note}")
    if preview_dir:
      im = preview.overlay(images_read(path), f.roi_names, f.centres, title=image_id)
      os.makedirs(preview_dir, exist_ok=True)
      files.write_bytes(os.path.join(preview_dir, image_id + ".png"), preview._png(im))
  if preview_dir:
    print(f"wrote {len(found)} preview(s) to {preview_dir}")
  return np.stack(crops), found


def images_read(path):
  from maml_jax.smi import images
  return images.read_gray(path)


def main(args) -> int:
  import csv
  import io
  import numpy as np
  from maml_jax.data.progress import progress
  from maml_jax import io as files
  from maml_jax.smi import images, predictor, prepare
  from maml_jax.smi.errors import SMIDataError

  if args.csv:
    files.check_output_file(args.csv, "--csv", args.overwrite)
  if args.preview:
    files.check_output_dir(args.preview, "--preview", args.overwrite)
  model = predictor.load(args.model)
  if args.image:
    if not os.path.isfile(args.image):
      raise SMIDataError(f"{args.image}: no such image file")
    paths = {os.path.splitext(os.path.basename(args.image))[0]: args.image}
  else:
    paths = images.list_images(args.images)
  if args.rois:
    per_image, names, template = prepare.read_centres(args.rois)
    if per_image is not None and len(paths) == 1 and next(iter(paths)) not in per_image and len(per_image) == 1:
      per_image = {next(iter(paths)): next(iter(per_image.values()))}  # one image, one row set: pair them
    rois = np.stack([images.rois_from_file(path, _centres_for(i, per_image, list(names), template,
                                                              model.roi_names, args.rois),
                                           coords=args.coords, roi_names=model.roi_names)
                     for i, path in progress(paths.items(), desc="cropping ROIs", unit="image",
                                         disable=len(paths) < 20)])
    found = {}
  else:
    rois, found = _located(paths, model.roi_names, args.preview, args.hand)
  out = predictor.stage_images(model, rois, args.rule)
  classes = model.classes
  if model.synthetic:
    print("note: this model was adapted on SYNTHETIC demo data; its stages mean nothing clinically")
  header = ["image_id", "stage", "rule"] + [f"p_stage_{c}" for c in classes] + [f"vote_{r}" for r in model.roi_names]
  rows = []
  for k, image_id in enumerate(paths):
    stage = classes[out["stage"][k]]
    probs = out["probs"][k]
    votes = [classes[v] for v in out["roi_votes"][k]]
    print(f"{image_id}: stage {stage} ({args.rule})  probabilities "
          + " ".join(f"{c}:{p:.2f}" for c, p in zip(classes, probs))
          + "  ROI votes " + " ".join(f"{r}:{v}" for r, v in zip(model.roi_names, votes)))
    rows.append([image_id, stage, args.rule] + [f"{p:.4f}" for p in probs] + votes)
  if args.csv:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    files.write_text(args.csv, buf.getvalue())
    print(f"wrote {args.csv}")
  return 0
