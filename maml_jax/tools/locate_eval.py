"""Measures joint localisation against expert boxes, leave-images-out; fits the shape model.

    python -m maml_jax.tools.locate_eval --boxes ../shared/data/handxray/joint_boxes.csv \\
        --images ../shared/data/handxray/images [--folds 46] [--write-model maml_jax/smi/shape_model.json]

For each boxed image: the hand geometry is found (`localize.hand_geometry`,
which has no fitted numbers), the expert finger-joint boxes are assigned to
fingers by geometry (below), and each of the six ROIs' box centre is written in
its finger's (t, u) frame.  The shape model is the median (t, u) per ROI (robust to a mis-assigned finger).  Each
image is scored with the model fitted on the OTHER folds' images only (k-fold
by image; 46 folds = leave-one-image-out), so no image is scored by numbers it
helped to make.  A hit: the 64x64 crop at the 512 scale around the located
centre contains the expert box's centre.

Boxes to fingers: DIP boxes (4: fingers 2-5), PIP boxes (5: thumb IP and
fingers 2-5) and MCP boxes (5) are each ordered by their angle about the wrist
box's centre, from the little finger to the thumb (the thumb is the end whose
PIP-row box, its IP joint, lies farther from every DIP box).  Coordinates are
scaled from the annotated size to the copy's.

`--write-model` writes the median over ALL boxed images (what ships); the numbers
it contains come from the box coordinates expressed in the frames of the
located fingertips and palm.
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import sys

import numpy as np

from maml_jax.smi import images as imio
from maml_jax.smi import localize as loc
from maml_jax.smi.shards import ROI_SIZE

# ROI -> (box label, index from the thumb side after ordering: 0 = thumb/most radial).
ROI_BOX = {"thumb_ip": ("PIP", 0), "thumb_mcp": ("MCP", 0), "middle_dip": ("DIP", 2), "ring_dip": ("DIP", 3),
           "middle_pip": ("PIP", 2), "ring_pip": ("PIP", 3)}
EXPECT = {"DIP": 4, "PIP": 5, "MCP": 5}


def read_boxes(path: str, images_dir: str) -> dict[str, dict[str, np.ndarray]]:
  """{image_id: {label: float [k, 2] box centres in the copy's pixels}}."""
  out: dict = collections.defaultdict(lambda: collections.defaultdict(list))
  sizes = {}
  with open(path, newline="") as f:
    for r in csv.DictReader(f):
      i = r["image_id"]
      if i not in sizes:
        sizes[i] = imio.read_gray(os.path.join(images_dir, i + ".png")).shape
      h, w = sizes[i]
      sx, sy = w / float(r["annotated_width"]), h / float(r["annotated_height"])
      cx = (float(r["xmin"]) + float(r["xmax"])) / 2 * sx
      cy = (float(r["ymin"]) + float(r["ymax"])) / 2 * sy
      out[i][r["label"]].append((cx, cy))
  return {i: {k: np.array(v) for k, v in d.items()} for i, d in out.items()}


def expert_centres(boxes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{roi: float [2]} for the six ROIs, fingers assigned by angle about the wrist box."""
  wrist = boxes["Wrist"][0]
  out = {}
  ordered = {}
  for label, n in EXPECT.items():
    c = boxes[label]
    if len(c) != n:
      raise ValueError(f"{n} {label} boxes expected, got {len(c)}")
    ang = np.arctan2(c[:, 1] - wrist[1], c[:, 0] - wrist[0])
    order = np.argsort(ang)  # increasing angle; which end is the thumb is decided below
    ordered[label] = c[order]
  # The thumb end: the thumb has no distal (DIP) box, so its IP box (the PIP end) stands far from
  # every DIP box while the little finger's PIP box has its DIP box just beyond it.  (Nearness to
  # the radius box, used before, picks the wrong end when the thumb is spread wide: 2 of 46 images.)
  p = ordered["PIP"]
  near_dip = [float(np.min(np.linalg.norm(boxes["DIP"] - p[k], axis=1))) for k in (0, -1)]
  flip = near_dip[1] > near_dip[0]
  for label in ordered:
    if flip:
      ordered[label] = ordered[label][::-1]
  # DIP has no thumb: index 0 of DIP is the index finger, so shift by one.
  for roi, (label, k) in ROI_BOX.items():
    out[roi] = ordered[label][k - 1 if label == "DIP" else k]
  return out


def transformed(image: np.ndarray, quarter_turns: int, mirror: bool):
  """The image mirrored (left-right) then turned counter-clockwise, and the matching map of
  (x, y) points: a robustness check on the same expert boxes."""
  h, w = image.shape
  out = image[:, ::-1] if mirror else image

  def move(xy):
    x, y = float(xy[0]), float(xy[1])
    if mirror:
      x = w - 1 - x
    hh, ww = h, w
    for _ in range(quarter_turns):  # np.rot90: (x, y) -> (y, W - 1 - x), and W, H swap
      x, y = y, ww - 1 - x
      hh, ww = ww, hh
    return np.array([x, y])
  return np.ascontiguousarray(np.rot90(out, quarter_turns)), move


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--boxes", required=True)
  ap.add_argument("--images", required=True)
  ap.add_argument("--folds", type=int, default=46, help="k-fold by image (default: leave one image out)")
  ap.add_argument("--write-model", metavar="JSON")
  ap.add_argument("--per-image", metavar="CSV", help="write each image's distances and hits")
  ap.add_argument("--rotate", type=int, choices=(0, 1, 2, 3), default=0,
                  help="turn every image (and its boxes) by this many quarter turns counter-clockwise")
  ap.add_argument("--mirror", action="store_true", help="mirror every image (and its boxes) left to right")
  ap.add_argument("--hand", choices=loc.HANDS, default="auto", help="as prepare-smi's --hand (default auto)")
  a = ap.parse_args(argv)
  boxes = read_boxes(a.boxes, a.images)
  ids = sorted(boxes)
  geos, truth, tu, failed = {}, {}, {}, {}
  for i in ids:
    image, move = transformed(imio.read_gray(os.path.join(a.images, i + ".png")), a.rotate, a.mirror)
    truth[i] = {r: move(c) for r, c in expert_centres(boxes[i]).items()}
    try:
      geos[i] = loc.hand_geometry(image, where=i, hand=a.hand)
    except loc.LocalizationError as e:
      failed[i] = str(e)
      continue
    tu[i] = {r: loc.joint_coordinates(geos[i], loc.FINGER_OF[r], truth[i][r]) for r in loc.JOINT_ROIS}
  fold = {i: n % a.folds for n, i in enumerate(ids)}
  dist = {r: [] for r in loc.JOINT_ROIS}
  hits = {r: [] for r in loc.JOINT_ROIS}
  rows = []
  rejected = {}
  for i in ids:
    image, _ = transformed(imio.read_gray(os.path.join(a.images, i + ".png")), a.rotate, a.mirror)
    fit = imio.square_fit(image.shape)
    held_out = {r: np.median([tu[j][r] for j in tu if fold[j] != fold[i]], 0) for r in loc.JOINT_ROIS}
    if i not in failed:
      try:  # the full checks, as prepare-smi runs them (joints near the hand outline, --hand)
        loc.locate(image, where=i, model=held_out, hand=a.hand)
      except loc.LocalizationError as e:
        rejected[i] = str(e)
    for r in loc.JOINT_ROIS:
      if i in failed:
        dist[r].append(np.inf)
        hits[r].append(False)
        rows.append((i, r, "", "", failed[i]))
        continue
      p = fit.to_square(loc.joint_position(geos[i], loc.FINGER_OF[r], held_out[r]))
      e = fit.to_square(truth[i][r])
      px, py = np.round(p)
      h = ROI_SIZE // 2
      hit = bool(px - h <= e[0] <= px + h - 1 and py - h <= e[1] <= py + h - 1)
      dist[r].append(float(np.hypot(*(p - e))))
      hits[r].append(hit)
      rows.append((i, r, f"{dist[r][-1]:.1f}", int(hit), ""))
  print(f"{len(ids)} boxed images, {a.folds}-fold by image (each image scored by a shape model fitted "
        f"without it); hand not found in {len(failed)}")
  for i, why in failed.items():
    print(f"  not found: {why}")
  print(f"{'ROI':12s} {'crop holds box centre':>22s} {'median dist (px @512)':>22s}")
  for r in loc.JOINT_ROIS:
    hr = np.array(hits[r])
    print(f"{r:12s} {hr.sum():>10d}/{len(hr)} = {100 * hr.mean():5.1f}% {np.median(dist[r]):>18.1f}")
  allh = np.concatenate([hits[r] for r in loc.JOINT_ROIS])
  print(f"{'all six':12s} {allh.sum():>10d}/{len(allh)} = {100 * allh.mean():5.1f}%")
  kept = [n for n, i in enumerate(ids) if i not in failed and i not in rejected]
  print(f"prepare-smi --hand {a.hand} would keep {len(kept)} of {len(ids)} images (also rejected by its "
        f"checks: {len(rejected)}); on the kept images:")
  for i, why in rejected.items():
    print(f"  rejected: {why}")
  for r in loc.JOINT_ROIS:
    hr = np.array(hits[r])[kept]
    print(f"{r:12s} {hr.sum():>10d}/{len(hr)} = {100 * hr.mean():5.1f}% {np.median(np.array(dist[r])[kept]):>18.1f}")
  if a.per_image:
    with open(a.per_image, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["image_id", "roi", "dist_px_512", "hit", "failure"])
      w.writerows(rows)
  if a.write_model:
    model = {"about": ("Median (t, u) of each ROI in its finger's frame: centre = tip + scale * (t * axis + "
                       "u * normal), axis down the finger, normal towards the thumb, scale the tip's distance "
                       "from the knuckle line's centre (the thumb: its distance from the index fingertip); "
                       "see localize.finger_frame.  Made by maml_jax/tools/locate_eval.py "
                       "from expert box coordinates (Koitka et al. 2018, MIT) of "
                       f"{len(tu)} images, expressed in the frames of the located fingertips, webs and palm."),
             "num_images": len(tu),
             "joints": {r: [round(float(v), 4) for v in np.median([tu[j][r] for j in tu], 0)] for r in loc.JOINT_ROIS},
             "spread": {r: [round(float(v), 4) for v in np.std([tu[j][r] for j in tu], 0)] for r in loc.JOINT_ROIS}}
    with open(a.write_model, "w") as f:
      json.dump(model, f, indent=2)
      f.write("\n")
    print(f"wrote {a.write_model}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
