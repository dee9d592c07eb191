"""SYNTHETIC demo data: epiphysis-like ROI crops whose look follows a stage.

The paper's hand X-rays are private, so the project ships a generator that
makes data of the same shape -- 865 images x 6 ROIs of 64x64 uint8, classes
(333, 345, 58, 88, 41) -- so that every command runs out of the box.  These are
drawings, not X-rays; everything made from them says so.

Each crop shows a joint seen on a hand X-ray: a shaft (metaphysis) below, a
growth plate (a dark gap) and an epiphysis above, and the neighbouring bone's
head at the top.  A hidden maturity m in [0, 1] drives the look:

- the epiphysis widens until it is as wide as the shaft (m ~ 0.45), then its
  edges curl down over the shaft ("capping", m > 0.4),
- it grows denser (brighter) with m,
- the growth-plate gap narrows, then fuses from the middle outwards (m > 0.7).

An image of stage s (0-based) has m = (s + u) / 5 with u uniform in [0, 1], so
images near a stage boundary look like the neighbouring stage.  Each ROI sees
m with its own biological jitter, noise and blur, which makes some ROIs more
informative than others (ROI 1 and 4 cleanest, 2, 3 and 6 worst, roughly as
in the paper's Table 4).  Pose (rotation, shift, scale), contrast, brightness
and bone texture vary per crop.  Patients: some have two images (at
neighbouring maturities); sex and age follow maturity with noise.

Deterministic in `seed`; vectorised numpy, a few seconds for the full set.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from maml_jax import io as files
from maml_jax.smi import shards
from maml_jax.smi.errors import SMIDataError
from maml_jax.smi.labels import PAPER_COUNTS_5, SMI5_CLASSES

GENERATOR_VERSION = 1
SIZE = shards.ROI_SIZE
# Per ROI: (pixel noise std, blur std in pixels, maturity jitter std, scale).
ROI_PROFILES = (
    (0.07, 0.8, 0.045, 1.12),   # roi1 thumb: clean
    (0.20, 2.2, 0.100, 0.95),   # roi2 middle distal: noisy, blurred
    (0.15, 1.7, 0.085, 1.00),   # roi3
    (0.06, 0.7, 0.040, 1.00),   # roi4 middle proximal: cleanest
    (0.10, 1.1, 0.060, 0.97),   # roi5
    (0.15, 1.7, 0.085, 0.95),   # roi6
)
PAIRED_PATIENTS = 60  # patients with two images (120 of the 865)


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gaussian_filter(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
  """Blurs each [.., H, W] image with its own Gaussian std (pixels), via FFT.

  Args:
    images: float32 [n, H, W]; sigma: float [n].
  """
  h, w = images.shape[-2:]
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.rfftfreq(w)[None, :]
  f2 = (fy ** 2 + fx ** 2).astype(np.float32)
  gain = np.exp(-2.0 * np.pi ** 2 * (np.asarray(sigma, np.float32)[:, None, None] ** 2) * f2)
  return np.fft.irfft2(np.fft.rfft2(images) * gain, s=(h, w)).astype(np.float32)


def render(maturity: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Draws ROI crops.

  Args:
    maturity: float [n] in [0, 1], the maturity each crop shows.
    roi: int [n] ROI index 0..5 (selects noise, blur and scale).
    rng: the generator for pose, contrast, texture and noise.
  Returns:
    uint8 [n, 64, 64].
  """
  n = len(maturity)
  prof = np.asarray(ROI_PROFILES, np.float32)[roi]
  noise_std, blur, _, scale = prof.T
  m = np.clip(maturity, 0.0, 1.0).astype(np.float32)[:, None, None]
  # Pose: rotate, shift and scale the sampling grid (coordinates in [-1, 1]).
  theta = rng.normal(0.0, np.deg2rad(7.0), n).astype(np.float32)[:, None, None]
  shift = rng.normal(0.0, 0.07, (n, 2)).astype(np.float32)
  zoom = (scale * rng.uniform(0.9, 1.1, n)).astype(np.float32)[:, None, None]
  g = np.linspace(-1.0, 1.0, SIZE, dtype=np.float32)
  x0, y0 = np.meshgrid(g, g)  # x: columns, y: rows (down)
  xs, ys = x0[None] - shift[:, 0, None, None], y0[None] - shift[:, 1, None, None]
  c, s = np.cos(theta), np.sin(theta)
  u = (c * xs + s * ys) / zoom
  v = (-s * xs + c * ys) / zoom
  k = 28.0 * zoom  # edge sharpness: about one pixel wide

  plate = 0.05
  gap = 0.13 * (1.0 - m) ** 0.8 + 0.012                         # half-width of the growth plate
  width = 0.20 + 0.34 * np.minimum(m / 0.45, 1.0)                # epiphysis half-width
  height = 0.13 + 0.10 * m
  cap = np.clip((m - 0.4) / 0.3, 0.0, 1.0)                      # edges curling over the shaft
  fuse = np.clip((m - 0.7) / 0.25, 0.0, 1.0)                    # fused fraction, from the middle

  shaft_w = 0.40 + 0.14 * np.exp(-np.maximum(v - plate, 0.0) / 0.18)
  shaft = _sigmoid(k * (shaft_w - np.abs(u))) * _sigmoid(k * (v - (plate + gap)))
  # Epiphysis: half-ellipse above the plate whose lower edge bends down at its
  # ends as capping proceeds.
  bottom = plate - gap + cap * 0.22 * (np.abs(u) / width) ** 4
  ell = 1.0 - (u / width) ** 2 - ((v - (plate - gap)) / (2.0 * height)) ** 2
  epi = _sigmoid(k * 0.5 * ell) * _sigmoid(k * (bottom - v))
  # Fusion: bone bridges the gap where |u| < fuse * width.
  bridge = _sigmoid(k * (fuse * width - np.abs(u))) * _sigmoid(k * (plate + gap - v)) * _sigmoid(k * (v - plate + gap))
  bridge = bridge * (fuse > 0)
  head = _sigmoid(k * 0.5 * (1.0 - (u / 0.5) ** 2 - ((v + 1.12) / 0.38) ** 2))  # the neighbouring bone's head

  density = 0.38 + 0.22 * m
  texture = _gaussian_filter(rng.normal(0.0, 1.0, (n, SIZE, SIZE)).astype(np.float32), np.full(n, 1.2))
  bone = np.maximum.reduce([0.56 * shaft, density * epi, 0.54 * bridge, 0.56 * head])
  img = 0.22 + 0.08 * (1.0 - np.abs(u)) + bone * (1.0 + 0.35 * texture)
  # Contrast, brightness, blur and noise of the crop.
  gain = rng.uniform(0.75, 1.25, n).astype(np.float32)[:, None, None]
  offset = rng.normal(0.0, 0.06, n).astype(np.float32)[:, None, None]
  img = _gaussian_filter(img * gain + offset, blur * rng.uniform(0.8, 1.2, n))
  img = img + noise_std[:, None, None] * rng.normal(0.0, 1.0, img.shape).astype(np.float32)
  return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _patients(label: np.ndarray, rng: np.random.Generator, pairs: int) -> np.ndarray:
  """Patient ids; `pairs` patients get two images of the same or next stage."""
  n = len(label)
  pid = -np.ones(n, np.int64)
  order = rng.permutation(n)
  next_id = 0
  for i in order:
    if next_id >= pairs:
      break
    if pid[i] >= 0:
      continue
    cand = np.flatnonzero((pid < 0) & (np.arange(n) != i) & ((label == label[i]) | (label == label[i] + 1)))
    if len(cand):
      j = cand[rng.integers(len(cand))]
      pid[[i, j]] = next_id
      next_id += 1
  rest = np.flatnonzero(pid < 0)
  pid[rest] = next_id + np.arange(len(rest))
  return pid


def generate(seed: int = 0, counts=PAPER_COUNTS_5, *, pairs: Optional[int] = None) -> shards.SMIData:
  """The synthetic SMI data set (class counts `counts`, 6 ROIs), deterministic in `seed`."""
  rng = np.random.default_rng([seed, GENERATOR_VERSION])
  counts = np.asarray(counts, np.int64)
  label = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int32)
  n, r = len(label), len(ROI_PROFILES)
  maturity = (label + rng.uniform(0.0, 1.0, n)) / len(counts)
  jitter = np.asarray(ROI_PROFILES)[:, 2]
  m_roi = maturity[:, None] + jitter[None, :] * rng.normal(0.0, 1.0, (n, r))
  flat_m, flat_r = m_roi.reshape(-1), np.tile(np.arange(r), n)
  # Chunks keep the float temporaries small (much faster than one big batch).
  rois = np.concatenate([render(flat_m[i:i + 256], flat_r[i:i + 256], rng)
                         for i in range(0, len(flat_m), 256)]).reshape(n, r, SIZE, SIZE)

  pairs = min(PAIRED_PATIENTS, n // 8) if pairs is None else pairs
  pid = _patients(label, rng, pairs)
  female = rng.uniform(size=pid.max() + 1) < 0.5
  sex = np.where(female[pid], "F", "M").astype("<U1")
  # Girls mature about a year earlier; ages 5-18 years as in the paper.
  age = 60.0 + 156.0 * maturity - 12.0 * female[pid] + rng.normal(0.0, 9.0, n)
  age = np.clip(age, 60.0, 216.0).astype(np.float32)
  return shards.SMIData(
      rois=rois, label=label, classes=SMI5_CLASSES[:len(counts)],
      roi_names=shards.DEFAULT_ROI_NAMES, synthetic=True, age_months=age, sex=sex,
      image_id=np.array([f"synthetic-{i:05d}" for i in range(n)]),
      patient_id=np.array([f"P{p:05d}" for p in pid]),
      source=f"SYNTHETIC demo data (maml_jax.smi.synthetic v{GENERATOR_VERSION}, seed {seed})",
      label_scheme={"name": "smi5", "source": "synthetic",
                    "mapping": "generated directly in the 5 merged stages"})


def demo_dir(seed: int = 0, cache_root: Optional[str] = None) -> str:
  return os.path.join(cache_root or files.cache_root(), f"smi_demo-v{GENERATOR_VERSION}-seed{seed}")


def write_demo(folder: str, seed: int = 0, *, overwrite: bool = True) -> shards.SMIData:
  """Generates the demo set and writes it as a shard set, atomically."""
  data = generate(seed)
  with files.atomic_dir(folder, overwrite=overwrite) as tmp:
    shards.write_shards(tmp, data, extra={"generator": {"name": "maml_jax.smi.synthetic",
                                                        "version": GENERATOR_VERSION, "seed": seed}})
  return data


def load_demo(seed: int = 0, cache_root: Optional[str] = None) -> shards.SMIData:
  """The demo set from the cache, generated (a few seconds) on first use."""
  folder = demo_dir(seed, cache_root)
  if os.path.isfile(os.path.join(folder, shards.MANIFEST)):
    try:
      data = shards.load_shards(folder)
      if data.synthetic:
        return data
    except SMIDataError:
      pass  # a damaged cache is simply rebuilt
  write_demo(folder, seed)
  return shards.load_shards(folder)
