"""Overlay PNGs of located ROIs, so a person can check the crops sit on the joints.

For a sample of located images and for every image that failed, writes
`<image_id>.png`: the radiograph with each ROI's 64x64-at-512 box and name
(failures: the reason in red), and `contact_sheet.png` with all of them as
tiles.  Written atomically; only the preview folder is touched.
"""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from maml_jax import io as files
from maml_jax.smi import images as imio
from maml_jax.smi.shards import ROI_SIZE

COLOURS = ("red", "orange", "yellow", "lime", "cyan", "magenta")
TILE = 256


def overlay(image: np.ndarray, names: Sequence[str], centres: np.ndarray, title: str = "",
            failure: str = "") -> Image.Image:
  """RGB picture of `image` (uint8 [H, W]) with a 64x64-at-512 box per centre (float [R, 2], original px)."""
  im = Image.fromarray(image).convert("RGB")
  d = ImageDraw.Draw(im)
  fit = imio.square_fit(image.shape)
  half = ROI_SIZE / 2 / fit.scale
  lw = max(1, int(round(max(image.shape) / 300)))
  for k, (name, (x, y)) in enumerate(zip(names, np.asarray(centres).reshape(-1, 2))):
    c = COLOURS[k % len(COLOURS)]
    if name == "whole_hand":  # the view is the whole hand: mark the palm centre it was turned about
      d.line([x - half, y, x + half, y], fill=c, width=lw)
      d.line([x, y - half, x, y + half], fill=c, width=lw)
      d.text((x + 2 * lw, y + 2 * lw), "whole-hand view (palm centre)", fill=c)
      continue
    d.rectangle([x - half, y - half, x + half, y + half], outline=c, width=lw)
    d.text((x - half + 2 * lw, y - half + lw), name, fill=c)
  if title:
    d.text((4, 4), title, fill="white")
  if failure:
    d.text((4, 18), "FAILED: " + failure[:90], fill="red")
  return im


def _png(im: Image.Image) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  return buf.getvalue()


def write_previews(folder: str, images_dir: str, summary, count: int = 24, overwrite: bool = False) -> str:
  """Writes overlays for `count` located images (an even sample) and every excluded one into
  `folder` (which appears complete or not at all; a non-empty one is replaced only with
  `overwrite`); returns the contact sheet's path."""
  with files.atomic_dir(folder, overwrite=overwrite) as tmp:
    _write(tmp, images_dir, summary, count)
  return os.path.join(folder, "contact_sheet.png")


def _write(folder: str, images_dir: str, summary, count: int) -> None:
  by_image: dict[str, list] = {}
  for image_id, roi, x, y, _ in summary.found:
    by_image.setdefault(image_id, []).append((roi, x, y))
  ids = list(by_image)
  if len(ids) > count:
    ids = [ids[i] for i in np.linspace(0, len(ids) - 1, count).round().astype(int)]
  paths = imio.list_images(images_dir)
  tiles = []
  for image_id in ids:
    rows = by_image[image_id]
    im = overlay(imio.read_gray(paths[image_id]), [r[0] for r in rows], np.array([r[1:] for r in rows]),
                 title=image_id)
    files.write_bytes(os.path.join(folder, image_id + ".png"), _png(im))
    tiles.append(im)
  for image_id, path, roi, reason in summary.excluded:
    try:
      image = imio.read_gray(path)
    except Exception:  # unreadable: a grey card carries the reason
      image = np.full((TILE, TILE), 40, np.uint8)
    im = overlay(image, [], np.zeros((0, 2)), title=image_id, failure=f"{roi}: {reason}" if roi else reason)
    files.write_bytes(os.path.join(folder, image_id + ".png"), _png(im))
    tiles.append(im)
  cols = max(1, min(8, len(tiles)))
  sheet = Image.new("RGB", (cols * TILE, max(1, -(-len(tiles) // cols)) * TILE))
  for n, t in enumerate(tiles):
    t = t.copy()
    t.thumbnail((TILE, TILE))
    sheet.paste(t, ((n % cols) * TILE, (n // cols) * TILE))
  files.write_bytes(os.path.join(folder, "contact_sheet.png"), _png(sheet))
