"""Reading hand X-rays and cutting ROI crops out of them.

Images (PNG, JPEG, 8- or 16-bit; DICOM when pydicom is installed) are read as
grayscale, scaled to 8 bits, and brought to 512x512 (the paper's size) with
the aspect ratio kept: the long side is scaled to 512 and the short side is
padded equally on both sides with zeros (black, as an X-ray's background), so
a 1600x2080 radiograph is not squashed.  ROI centres given in original pixels
map to (x + 0.5) * s - 0.5 + pad_x with s = 512 / max(width, height) (see
`SquareFit`).  A 64x64 crop is cut around each centre; parts of the crop
outside the image are zero as well.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from maml_jax.smi.errors import SMIDataError
from maml_jax.smi.shards import ROI_SIZE

IMAGE_SIZE = 512
MIN_SIZE = 128  # smaller images cannot give 64x64 crops at the 512 scale
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


def read_gray(path: str, min_size: int = 1) -> np.ndarray:
  """uint8 [H, W] grayscale image; SMIDataError naming `path` if unreadable or
  smaller than `min_size` pixels on its short side."""
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
  if min(a.shape) < min_size:
    raise SMIDataError(f"{path}: the image is {a.shape[1]}x{a.shape[0]} pixels, smaller than {min_size} px "
                       "on its short side (too small to find a hand or cut 64x64 joint crops at the 512 scale)")
  return a


@dataclasses.dataclass(frozen=True)
class SquareFit:
  """How an H x W image sits in the size x size square: scaled by `scale`, then
  shifted by (`pad_x`, `pad_y`) pixels."""
  scale: float
  pad_x: int
  pad_y: int

  def to_square(self, xy: np.ndarray) -> np.ndarray:
    """float [..., 2] (x, y) original pixels -> square pixels (pixel centres map to pixel centres)."""
    return (np.asarray(xy, np.float64) + 0.5) * self.scale - 0.5 + np.array([self.pad_x, self.pad_y])

  def to_original(self, xy: np.ndarray) -> np.ndarray:
    """The inverse of `to_square`."""
    return (np.asarray(xy, np.float64) + 0.5 - np.array([self.pad_x, self.pad_y])) / self.scale - 0.5


def square_fit(shape: tuple[int, int], size: int = IMAGE_SIZE) -> SquareFit:
  """The aspect-keeping fit of an image of `shape` (H, W) into size x size."""
  h, w = shape
  scale = size / max(h, w)
  nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
  return SquareFit(scale, (size - nw) // 2, (size - nh) // 2)


def resize(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """uint8 [size, size]: bilinear, aspect ratio kept, short side zero-padded (see `square_fit`)."""
  if image.shape == (size, size):
    return image
  fit = square_fit(image.shape, size)
  h, w = image.shape
  nw, nh = max(1, int(round(w * fit.scale))), max(1, int(round(h * fit.scale)))
  out = np.zeros((size, size), np.uint8)
  out[fit.pad_y:fit.pad_y + nh, fit.pad_x:fit.pad_x + nw] = np.asarray(
      Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
  return out


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
      `coords == "original"`, or in the 512x512 (aspect-kept, padded) image's
      when "resized".
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
    centres = np.clip(square_fit(image.shape).to_square(centres), 0, IMAGE_SIZE - 1)
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
