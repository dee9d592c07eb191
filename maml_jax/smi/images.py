"""Reading hand X-rays and cutting ROI crops out of them.

Images (PNG, JPEG, 8- or 16-bit; DICOM when pydicom is installed) are read as
grayscale, scaled to 8 bits, and resized to 512x512 (the paper's size; the
aspect ratio is not kept, so ROI centres given in original pixels are scaled
by 512/width and 512/height).  A 64x64 crop is cut around each centre;
parts of the crop outside the image are zero (black), as in an X-ray's
background.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from maml_jax.smi.errors import SMIDataError
from maml_jax.smi.shards import ROI_SIZE

IMAGE_SIZE = 512
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTENSIONS = (".dcm", ".dicom")


def _to_uint8(a: np.ndarray) -> np.ndarray:
  """Scales an integer or float image to uint8 using its own range."""
  if a.dtype == np.uint8:
    return a
  a = a.astype(np.float64)
  lo, hi = float(np.min(a)), float(np.max(a))
  if hi <= lo:
    return np.zeros(a.shape, np.uint8)
  return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _read_dicom(path: str) -> np.ndarray:
  try:
    import pydicom  # optional: only DICOM input needs it
  except ImportError:
    raise SMIDataError(f"{path}: reading DICOM needs the optional package pydicom "
                       "(pip install pydicom), or convert the images to PNG") from None
  try:
    ds = pydicom.dcmread(path)
    a = ds.pixel_array.astype(np.float64)
  except Exception as e:  # pydicom raises many types for bad files
    raise SMIDataError(f"{path}: cannot read the DICOM image ({type(e).__name__}: {e})") from None
  a = a * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
  if a.ndim == 3:  # multi-frame or colour: take the first frame / mean of channels
    a = a[0] if a.shape[-1] not in (3, 4) else a[..., :3].mean(-1)
  if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
    a = a.max() - a  # MONOCHROME1 stores bone dark; make it bright like the rest
  return _to_uint8(a)


def read_gray(path: str) -> np.ndarray:
  """uint8 [H, W] grayscale image; SMIDataError naming `path` if unreadable."""
  if not os.path.isfile(path):
    raise SMIDataError(f"{path}: no such image file")
  if path.lower().endswith(DICOM_EXTENSIONS):
    a = _read_dicom(path)
  else:
    try:
      with warnings.catch_warnings():
        # Over PIL's pixel limit (MAX_IMAGE_PIXELS; twice it raises anyway):
        # a decompression bomb, or no radiograph.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(path)
      with im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
          a = _to_uint8(np.asarray(im))
        else:
          a = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, MemoryError) as e:
      raise SMIDataError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
  if a.ndim != 2 or min(a.shape) < 1:
    raise SMIDataError(f"{path}: expected a 2-D grayscale image, got shape {list(a.shape)}")
  return a


def resize(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """uint8 [size, size], bilinear (aspect ratio not kept)."""
  if image.shape == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def crop_rois(image: np.ndarray, centres: np.ndarray, *, where: str, roi_names: Sequence[str] = (),
              size: int = ROI_SIZE) -> np.ndarray:
  """Cuts `size`x`size` crops centred at `centres`, zero-padded at the borders.

  The crop around centre (x, y) covers columns x - size/2 .. x + size/2 - 1 and
  rows y - size/2 .. y + size/2 - 1, so pixel (x, y) lands at crop index
  (size/2, size/2).

  Args:
    image: uint8 [H, W].
    centres: float [R, 2] as (x, y) = (column, row) in `image`'s pixels; rounded.
    where: names the image in error messages.
  Returns:
    uint8 [R, size, size].
  """
  h, w = image.shape
  centres = np.asarray(centres, np.float64)
  half = size // 2
  padded = np.pad(image, half)  # so every in-image centre has a full window
  out = np.zeros((len(centres), size, size), np.uint8)
  for r, (x, y) in enumerate(centres):
    name = roi_names[r] if r < len(roi_names) else str(r + 1)
    if not (np.isfinite(x) and np.isfinite(y)):
      raise SMIDataError(f"{where}: ROI {name} has no centre (x={x}, y={y})")
    xi, yi = int(np.round(x)), int(np.round(y))
    if not (0 <= xi < w and 0 <= yi < h):
      raise SMIDataError(f"{where}: ROI {name} centre (x={x:g}, y={y:g}) is outside the {w}x{h} image")
    out[r] = padded[yi:yi + size, xi:xi + size]
  return out


def rois_from_file(path: str, centres: np.ndarray, *, coords: str = "original",
                   roi_names: Sequence[str] = ()) -> np.ndarray:
  """Reads an image, brings it to 512x512 and cuts its ROIs.

  Args:
    path: the image file.
    centres: float [R, 2] (x, y) centres, in the original image's pixels when
      `coords == "original"`, or in the 512x512 image's when "resized".
  Returns:
    uint8 [R, 64, 64].
  """
  image = read_gray(path)
  centres = np.asarray(centres, np.float64).copy()
  for r, (x, y) in enumerate(centres):   # NaN = not given (refused by crop_rois); inf is never a centre
    if np.isinf(x) or np.isinf(y):
      name = roi_names[r] if r < len(roi_names) else str(r + 1)
      raise SMIDataError(f"{path}: ROI {name} centre (x={x:g}, y={y:g}) is not a finite pixel position")
  if coords == "original":
    h, w = image.shape
    for r, (x, y) in enumerate(centres):
      if np.isfinite(x) and np.isfinite(y) and not (0 <= x < w and 0 <= y < h):
        name = roi_names[r] if r < len(roi_names) else str(r + 1)
        raise SMIDataError(f"{path}: ROI {name} centre (x={x:g}, y={y:g}) is outside the {w}x{h} image")
    # Pixel centres map as (x + 0.5) * scale - 0.5, the convention of the resize.
    scale = np.array([IMAGE_SIZE / w, IMAGE_SIZE / h])
    centres = np.clip((centres + 0.5) * scale - 0.5, 0, IMAGE_SIZE - 1)
  elif coords != "resized":
    raise ValueError(f"coords must be 'original' or 'resized', got {coords!r}")
  return crop_rois(resize(image), centres, where=path, roi_names=roi_names)


def list_images(folder: str) -> dict[str, str]:
  """{image_id: path} for the image files directly in `folder` (id = file name without extension)."""
  if not os.path.isdir(folder):
    raise SMIDataError(f"{folder}: no such image folder")
  found: dict[str, str] = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in IMAGE_EXTENSIONS + DICOM_EXTENSIONS:
      continue
    if stem in found:
      raise SMIDataError(f"{folder}: two images share the id {stem!r} "
                         f"({os.path.basename(found[stem])} and {name})")
    found[stem] = os.path.join(folder, name)
  if not found:
    raise SMIDataError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS + DICOM_EXTENSIONS)})")
  return found
