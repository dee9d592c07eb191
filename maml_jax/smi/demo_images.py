"""SYNTHETIC demo X-ray files, for trying `prepare-smi` and `predict`.

Writes each synthetic image's six ROI crops into a 512x512 PNG at fixed,
hand-like centres (thumb, middle and ring fingers) on a dark background,
with `labels.csv`, `rois.csv` (long form) and a `SYNTHETIC.txt` marker that
`prepare-smi` recognises.  Cropping these files at the listed centres gives
back exactly the crops they were made from.
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np
from PIL import Image

from maml_jax import io as files
from maml_jax.smi.images import IMAGE_SIZE
from maml_jax.smi.shards import ROI_SIZE, SMIData

# (x, y) centres in the 512x512 image: thumb, middle finger distal/middle/
# proximal, ring finger distal/proximal.
DEMO_CENTRES = np.array([[118, 330], [256, 80], [256, 180], [256, 290], [350, 110], [352, 300]])


def render_image(rois: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """uint8 [512, 512]: the crops [R, 64, 64] pasted at DEMO_CENTRES over faint noise."""
  img = np.clip(rng.normal(18, 4, (IMAGE_SIZE, IMAGE_SIZE)), 0, 255).astype(np.uint8)
  h = ROI_SIZE // 2
  for (x, y), crop in zip(DEMO_CENTRES, rois):
    img[y - h:y + h, x - h:x + h] = crop
  return img


def write_demo_images(folder: str, data: SMIData, limit: int = 0, seed: int = 0) -> int:
  """Writes PNGs + labels.csv + rois.csv + SYNTHETIC.txt into `folder`; returns the image count."""
  if len(data.roi_names) != len(DEMO_CENTRES):
    raise ValueError(f"demo images hold {len(DEMO_CENTRES)} ROIs, the data has {len(data.roi_names)}")
  n = data.num_images if limit <= 0 else min(limit, data.num_images)
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  lab, roi = io.StringIO(), io.StringIO()
  lw, rw = csv.writer(lab), csv.writer(roi)
  lw.writerow(["image_id", "stage", "patient_id", "sex", "age_months"])
  rw.writerow(["image_id", "roi", "x", "y"])
  for i in range(n):
    image_id = str(data.image_id[i])
    buf = io.BytesIO()
    Image.fromarray(render_image(data.rois[i], rng)).save(buf, format="PNG")
    files.write_bytes(os.path.join(folder, image_id + ".png"), buf.getvalue())
    lw.writerow([image_id, data.classes[data.label[i]], data.patient_id[i], data.sex[i], f"{data.age_months[i]:.1f}"])
    for name, (x, y) in zip(data.roi_names, DEMO_CENTRES):
      rw.writerow([image_id, name, int(x), int(y)])
  files.write_text(os.path.join(folder, "labels.csv"), lab.getvalue())
  files.write_text(os.path.join(folder, "rois.csv"), roi.getvalue())
  files.write_text(os.path.join(folder, "SYNTHETIC.txt"),
                   "SYNTHETIC demo images made by maml_jax (make-smi-demo): drawings, not X-rays.\n"
                   "Stages in labels.csv are already 1..5: pass --stages 5 to prepare-smi.\n")
  return n


def preview(data: SMIData, path: str, per_stage: int = 2) -> None:
  """A montage PNG: rows = stages (per_stage images each), columns = ROIs."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [(c, i) for c in range(data.num_classes) for i in np.flatnonzero(data.label == c)[:per_stage]]
  r = len(data.roi_names)
  fig, axes = plt.subplots(len(rows), r, figsize=(1.3 * r, 1.3 * len(rows)), squeeze=False)
  for k, (c, i) in enumerate(rows):
    for j in range(r):
      ax = axes[k, j]
      ax.imshow(data.rois[i, j], cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([]), ax.set_yticks([])
      if k == 0:
        ax.set_title(data.roi_names[j], fontsize=8)
      if j == 0:
        ax.set_ylabel(f"stage {data.classes[c]}", fontsize=8)
  fig.suptitle(("SYNTHETIC demo data: " if data.synthetic else "") + "ROI crops by stage", fontsize=9)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=100)
  plt.close(fig)
