"""Class-per-folder image sets (`root/<class>/<image files>`) and image fitting.

`fit_image` brings any image to the configured size and channel mode, the one
place where that happens for every source of the meta-dataset:

  * channels: RGB -> gray by the ITU-R 601-2 luma transform
    (L = 299/1000 R + 587/1000 G + 114/1000 B, Pillow's `convert('L')`);
    gray -> RGB by replicating the channel; 16-bit grayscale is scaled to 8 bits
    (divided by 257); alpha is dropped.
  * size: Pillow's bilinear filter to `size x size`.  Pillow widens the filter
    support by the scale factor when shrinking, so downscaling averages over the
    source area (antialiased) and upscaling (CIFAR-100 32 -> 64) is plain
    bilinear interpolation.  Non-square images are stretched, not cropped.
  The colour conversion comes first, so resizing works on the final channels.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class ImageFolderError(DataError):
  """The image folder is missing, empty or holds an unreadable image."""


def fit_image(image, size: int, channels: int) -> np.ndarray:
  """uint8 [size, size, channels] from a PIL image or a uint8 [H, W(, C)] array."""
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise ValueError(f"image arrays must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    image = Image.fromarray(image)
  if image.mode.startswith("I;16"):
    image = Image.fromarray(np.round(np.asarray(image, np.float32) / 257.0).astype(np.uint8))
  image = image.convert("L" if channels == 1 else "RGB")
  if image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  return np.asarray(image, np.uint8).reshape(size, size, channels)


def read_image(path: str, size: int, channels: int) -> np.ndarray:
  """Decodes one file and fits it; a bad file raises ImageFolderError naming it."""
  try:
    with Image.open(path) as im:
      im.load()
      return fit_image(im, size, channels)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
    raise ImageFolderError(f"cannot read image {path}: {e}") from e


def scan_image_folder(root: str) -> list[tuple[str, list[str]]]:
  """[(class name, sorted image paths)] for the sorted class folders of `root`."""
  if not os.path.isdir(root):
    raise ImageFolderError(f"image folder {root} does not exist or is not a folder")
  classes = []
  for name in sorted(os.listdir(root)):
    d = os.path.join(root, name)
    if name.startswith(".") or not os.path.isdir(d):
      continue
    files = sorted(os.path.join(d, f) for f in os.listdir(d)
                   if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                   and os.path.isfile(os.path.join(d, f)))
    if not files:
      raise ImageFolderError(f"class folder {d} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    classes.append((name, files))
  if not classes:
    raise ImageFolderError(f"image folder {root} has no class folders; expected {root}/<class>/<images>")
  return classes


def folder_fingerprint(classes: Sequence[tuple[str, Sequence[str]]], root: str) -> dict:
  """A digest of every file's relative path, size and modification time."""
  h = hashlib.sha256()
  n = 0
  for _, files in classes:
    for f in files:
      st = os.stat(f)
      h.update(f"{os.path.relpath(f, root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
      n += 1
  return {"files": n, "classes": len(classes), "sha256": h.hexdigest()}
