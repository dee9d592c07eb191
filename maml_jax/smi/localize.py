"""Finding the hand and its finger joints in an unregistered hand radiograph.

No learned weights: image analysis finds the hand and its fingertips, and a
small shape model (numbers in `shape_model.json`, made from expert box
coordinates only; written by `maml_jax/tools/locate_eval.py --write-model`) places each joint
between its fingertip and the palm.

Steps, on a copy scaled to 256 px on the long side:
  1. hand mask: smoothed image thresholded (Otsu, retried inside the first
     mask when the background is brighter than usual, or inside a dark film
     that a light box frames), largest connected component, holes filled;
     when five fingertips are not found, again at thresholds nearer the bone
     level (touching fingers);
  2. palm centre: the mask point farthest from the mask's edge (the palm is
     the widest part of a hand), palm radius = that distance;
  3. the arm: where the mask leaves the image (or, for a hand wholly inside
     the frame, opposite the fingers);
  4. fingertips: peaks of the mask's outline distance from the palm centre,
     in the half-plane away from the arm; five are needed; each is followed
     out along its finger while the image stays brighter than midway between
     film and soft tissue; the webs between fingers give the knuckle centre;
  5. fingers by geometry: the thumb is the end finger with the wider angular
     gap to its neighbour and the tip nearer the wrist; middle and ring are the third
     and fourth from it.  A thumb on the image's left, with the fingers up,
     means a right hand (the image is a mirrored view of a left one);
  6. each joint at `tip + scale * (t * axis + u * normal)`, axis down the
     finger, scale the tip's distance from the knuckle line (the centre of
     the webs between the four fingers; for the thumb, its distance from the
     index fingertip), (t, u) per joint from the shape model.
A step that cannot be done confidently raises `LocalizationError` naming the
image and the reason; nothing is guessed.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from maml_jax.smi.errors import SMIDataError

WORK_SIZE = 256
# The six ROIs, in the paper's order (ROI 2 = middle distal, ROI 4 = middle
# proximal); see docs/smi-localisation.md for why these joints.
JOINT_ROIS = ("thumb_ip", "middle_dip", "ring_dip", "middle_pip", "ring_pip", "thumb_mcp")
FINGER_OF = {"thumb_ip": 0, "thumb_mcp": 0, "middle_dip": 2, "middle_pip": 2, "ring_dip": 3, "ring_pip": 3}
SHAPE_MODEL_PATH = os.path.join(os.path.dirname(__file__), "shape_model.json")


class LocalizationError(SMIDataError):
  """The hand or a joint could not be found confidently; names the image, ROI and reason."""

  def __init__(self, where: str, roi: str, reason: str):
    super().__init__(f"{where}: cannot locate {roi}: {reason}")
    self.where, self.roi, self.reason = where, roi, reason


@dataclasses.dataclass(frozen=True)
class HandGeometry:
  """What was found, in the ORIGINAL image's pixels (x = column, y = row).

  Attributes:
    tips: float [5, 2] fingertips, thumb first, then index, middle, ring, little.
    palm: float [2] palm centre; palm_radius its distance to the mask edge.
    arm: float [2] unit vector from the palm towards the arm.
    mirrored: True when the thumb sits where a right hand's would (the image
      shows a right hand, or a left hand seen mirrored).
    mask: bool [h, w] hand mask at the working scale; work_scale its scale.
    doubt: what was assumed rather than seen ("" when nothing).
    right_score: thumb evidence for a right hand (> THUMB_MARGIN: called right; < -THUMB_MARGIN: left).
    knuckles: float [2] centre of the three webs between the four fingers (None: not found).
  """
  tips: np.ndarray
  palm: np.ndarray
  palm_radius: float
  arm: np.ndarray
  mirrored: bool
  mask: np.ndarray
  work_scale: float
  doubt: str = ""
  right_score: float = 0.0
  knuckles: Optional[np.ndarray] = None


def load_shape_model(path: str = SHAPE_MODEL_PATH) -> dict[str, np.ndarray]:
  """{roi name: float [2] (t, u)} from the shipped shape model."""
  with open(path) as f:
    m = json.load(f)
  return {k: np.asarray(v, np.float64) for k, v in m["joints"].items()}


def _otsu3(values: np.ndarray) -> tuple[float, float]:
  """The two thresholds splitting `values` into three classes (background, soft tissue, bone)
  with the least within-class variance, on a 64-bin histogram."""
  hist, edges = np.histogram(values, bins=64)
  p = hist.astype(np.float64) / max(hist.sum(), 1)
  mids = (edges[:-1] + edges[1:]) / 2
  c0, c1 = np.concatenate([[0], np.cumsum(p)]), np.concatenate([[0], np.cumsum(p * mids)])
  best, arg = -1.0, (1, 2)
  for i in range(1, 63):
    for j in range(i + 1, 64):
      s = 0.0
      for a, b in ((0, i), (i, j), (j, 64)):
        w = c0[b] - c0[a]
        if w > 0:
          s += (c1[b] - c1[a]) ** 2 / w
      if s > best:
        best, arg = s, (i, j)
  return float(edges[arg[0]]), float(edges[arg[1]])


SOLID = 0.86  # mask area / convex hull area above which a region is a film or background, not a hand


def _solidity(m: np.ndarray) -> float:
  """Area of the mask over the area of its convex hull."""
  from scipy.spatial import ConvexHull, QhullError
  edge = m & ~ndimage.binary_erosion(m)
  ys, xs = np.nonzero(edge)
  if len(xs) < 10:
    return 1.0
  try:
    return float(m.sum() / max(ConvexHull(np.stack([xs, ys], 1)).volume, 1.0))
  except QhullError:
    return 1.0


def _largest_component(m: np.ndarray) -> np.ndarray:
  lab, n = ndimage.label(m)
  if n == 0:
    return m
  sizes = ndimage.sum_labels(m, lab, np.arange(1, n + 1))
  return lab == (1 + int(np.argmax(sizes)))


def work_image(image: np.ndarray) -> tuple[np.ndarray, float]:
  """float [h, w] in 0..1 with the long side WORK_SIZE, and its scale from the original."""
  h, w = image.shape
  s = WORK_SIZE / max(h, w)
  small = np.asarray(Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
  return ndimage.gaussian_filter(small.astype(np.float32) / 255.0, 1.0), s


def _film_inside(m: np.ndarray) -> Optional[np.ndarray]:
  """bool [h, w]: the dark film that the bright region `m` frames (a light box or a lit frame
  around the film, the hand inside it), or None when `m` frames no large dark area.

  The frame may be open where the film runs off the image: the image's edge closes it, but then
  at most FILM_OPEN of the dark area's outline may lie on the image's edge (a hand on a dark
  background has the background reaching most of the edge).
  """
  closed = ndimage.binary_fill_holes(np.pad(m, 1, constant_values=True))[1:-1, 1:-1]
  holes = _largest_component(closed & ~m)
  if holes.mean() < 0.15:
    return None
  rim = holes & ~ndimage.binary_erosion(holes, border_value=0)
  on_edge = rim[0].sum() + rim[-1].sum() + rim[1:-1, 0].sum() + rim[1:-1, -1].sum()
  if on_edge > FILM_OPEN * rim.sum():
    return None
  from scipy.spatial import ConvexHull, QhullError
  ys, xs = np.nonzero(rim)
  try:
    pts = np.stack([xs, ys], 1)[ConvexHull(np.stack([xs, ys], 1)).vertices]
  except QhullError:
    return None
  # The hull, not the hole: the hand (and an arm crossing the film's edge) lies inside the film.
  film = Image.new("1", (m.shape[1], m.shape[0]), 0)
  ImageDraw.Draw(film).polygon([tuple(map(float, p)) for p in pts], fill=1)
  return ndimage.binary_erosion(np.asarray(film, bool), iterations=3)


FILM_OPEN = 0.3  # share of a film's outline that may lie on the image's edge (the film runs off the image)
MASK_LEVELS = (0.0, 0.3, 0.55)  # thresholds tried, as a fraction of the way from the tissue to the bone level


def hand_mask(g: np.ndarray, level: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """(mask, view), bool [h, w] each: the hand (with whatever arm is in view) in the work image
  `g`, and the part of the frame that shows the patient (the whole image, or a film inside it).

  `level` 0 thresholds at the background/soft-tissue split; higher levels move the threshold
  towards the bone level, which parts fingers whose soft tissue touches.
  """
  inside = np.ones(g.shape, bool)
  lo, hi = _otsu3(g)
  field = view = inside
  for _ in range(4):
    field = inside
    lo, hi = _otsu3(g[inside])
    m = _largest_component(ndimage.binary_opening((g > lo) & inside, iterations=2))
    film = _film_inside(m)
    if film is not None and film.sum() >= 50:  # a bright frame around a dark film: look inside the film
      inside = view = film
      continue
    # A hand with its fingers is far from convex; a bright film, a light box or a lit background
    # is not.  Then the hand is the bright part inside it: split again within.
    if m.sum() < 50 or (m.mean() <= 0.6 and _solidity(m) < SOLID):
      break
    new = ndimage.binary_erosion(m, iterations=3)
    if new.sum() < 50:
      break
    inside = new
  if level > 0:
    m = _largest_component(ndimage.binary_opening((g > lo + level * (hi - lo)) & field, iterations=2))
  m = ndimage.binary_closing(m, iterations=2)
  return ndimage.binary_fill_holes(m) & field, view


def _peaks(prof: np.ndarray, min_height: float, min_drop: float) -> list[int]:
  """Circular local maxima of `prof` [B] above `min_height` that stand `min_drop` above
  the lowest point between them and their neighbouring peaks."""
  b = len(prof)
  cand = [i for i in range(b) if prof[i] >= min_height and prof[i] >= prof[i - 1] and prof[i] > prof[(i + 1) % b]]
  changed = True
  while changed and len(cand) > 1:
    changed = False
    for k, i in enumerate(cand):
      j = cand[(k + 1) % len(cand)]
      seg = prof[np.arange(i, i + ((j - i) % b) + 1) % b]
      if min(prof[i], prof[j]) - seg.min() < min_drop:  # no real valley: keep the higher one
        cand.remove(i if prof[i] < prof[j] else j)
        changed = True
        break
  return cand


def _unit(v: np.ndarray) -> np.ndarray:
  return v / max(float(np.linalg.norm(v)), 1e-9)


@dataclasses.dataclass(frozen=True)
class HandRegion:
  """The hand at the working scale: mask bool [h, w], palm centre [2] (x, y), palm radius,
  arm unit vector [2] from the palm towards the arm, scale from the original, outline
  profile (max outline distance from the palm per 2-degree bin) and its outline points."""
  mask: np.ndarray
  palm: np.ndarray
  radius: float
  arm: Optional[np.ndarray]
  scale: float
  profile: np.ndarray
  bin_of: np.ndarray
  dist: np.ndarray
  xy: np.ndarray
  gray: Optional[np.ndarray] = None
  view: Optional[np.ndarray] = None


BINS = 180
OUTLINE_SLACK = 0.3  # palm radii a located joint may lie outside the hand mask
FINGER_SPAN = 115  # degrees either side of "away from the arm" where fingertips are looked for
THUMB_MARGIN = 0.25  # thumb-score difference needed to call a right hand
UPSIDE_DOWN = 0.5   # the hand's axis (wrist to fingers) pointing this far down the image is noted
RAGGED = 110  # outline perimeter^2 / area above which a region is speckle, not a hand (hands: 20-80)
THUMB_MIDLINE = 0.4  # the thumb's axis: its midline out to this share of its scale from the tip
MIN_REACH = 1.3  # a fingertip lies at least this many palm radii from the palm centre
MIN_DROP = 0.12  # a fingertip stands this many palm radii above the valleys beside it


# A radiograph is smooth at the pixel scale: neighbouring pixels correlate strongly
# (docs/smi-localisation.md gives the range over the shared radiographs).  Noise,
# whose neighbours are independent, is refused before the downscaling and blur of
# `work_image` turn it into smooth blobs that look like a hand.
MIN_PIXEL_CORRELATION = 0.5


def pixel_correlation(image: np.ndarray) -> float:
  """Correlation of horizontally neighbouring pixels of a [h, w] image (1: smooth, 0: noise)."""
  a = np.asarray(image, np.float64)
  x, y = a[:, :-1].ravel(), a[:, 1:].ravel()
  sx, sy = x.std(), y.std()
  if sx == 0 or sy == 0:
    return 1.0   # constant: the blank-image check says so
  return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def hand_region(image: np.ndarray, *, where: str = "image", level: float = 0.0) -> HandRegion:
  """Finds the hand mask, the palm and (when the arm leaves the frame) the arm's direction.

  Raises:
    LocalizationError for a blank image, noise, or one with no hand-sized bright region.
  """
  c = pixel_correlation(image)
  if c < MIN_PIXEL_CORRELATION:
    raise LocalizationError(where, "hand", f"not a radiograph: neighbouring pixels correlate {c:.2f} (noise or "
                            f"texture; radiographs are smooth, over {MIN_PIXEL_CORRELATION})")
  g, s = work_image(image)
  if float(np.percentile(g, 99.5) - np.percentile(g, 0.5)) < 0.05:
    raise LocalizationError(where, "hand", "the image is blank (no contrast)")
  mask, field = hand_mask(g, level)
  # A thin bright strip joined to the hand and running to the image's edge (a film's edge, a
  # ruler) is not hand: cut it off where it is narrower than a finger-width opening keeps.
  thin = mask & ~ndimage.binary_dilation(ndimage.binary_opening(mask, iterations=4), iterations=5)
  lab, n = ndimage.label(thin)
  edge_band = np.zeros_like(mask)
  edge_band[:4], edge_band[-4:], edge_band[:, :4], edge_band[:, -4:] = True, True, True, True
  touching = np.unique(lab[edge_band & thin])
  if n and len(touching):
    mask = _largest_component(mask & ~np.isin(lab, touching[touching > 0]))
  frac = float(mask.mean())
  if not 0.04 <= frac <= 0.85:
    raise LocalizationError(where, "hand", f"no hand-sized bright region (the largest covers {100 * frac:.0f}% "
                            "of the image)")
  edge = mask & ~ndimage.binary_erosion(mask)
  ragged = float(edge.sum()) ** 2 / max(float(mask.sum()), 1.0)
  if ragged > RAGGED:
    raise LocalizationError(where, "hand", f"the bright region's outline is ragged (perimeter^2 / area {ragged:.0f}, "
                            f"a hand's is under {RAGGED}): speckle or texture, not a hand")
  dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
  cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
  palm, r = np.array([cx, cy], np.float64), float(dist[cy, cx])
  ys, xs = np.nonzero(edge)
  d = np.hypot(xs - palm[0], ys - palm[1])
  ang = np.arctan2(ys - palm[1], xs - palm[0])
  k = ((ang + np.pi) / (2 * np.pi) * BINS).astype(int) % BINS
  prof = np.zeros(BINS)
  np.maximum.at(prof, k, d)
  # Where the arm leaves the view (the image's edge, or the film's): a band, not the edge row, as
  # the mask's opening pulls it a few pixels in from the edge.
  border = field & ~ndimage.binary_erosion(field, iterations=4, border_value=0)
  # The arm is the largest stretch of the hand along that band (a fingertip may touch it too).
  # Opened wide first, so a thin film edge or marker joined to the arm does not pull it aside.
  wide = ndimage.binary_opening(mask, iterations=4)
  by, bx = np.nonzero(_largest_component((wide if (wide & border).any() else mask) & border))
  arm = _unit(np.array([bx.mean(), by.mean()]) - palm) if len(bx) >= 6 else None
  return HandRegion(mask, palm, r, arm, s, prof, k, d, np.stack([xs, ys], 1).astype(np.float64), g, field)


def _extend_tip(reg: HandRegion, tip: np.ndarray) -> np.ndarray:
  """float [2]: `tip` [2] (work pixels) moved out along the line from the palm while the image
  stays brighter than midway between the film around the hand and the finger's soft tissue.

  A threshold set for the whole hand can cut off the thin, faint last phalanx (a film on a
  light box, a dark exposure); the finger's own contrast with the film beside it finds its end.
  Never moves the tip inwards, nor by more than half the tip's distance from the palm.
  """
  g, mask = reg.gray, reg.mask
  h, w = g.shape
  out = tip - reg.palm
  length = float(np.linalg.norm(out))
  out = out / max(length, 1e-9)
  near = ndimage.binary_dilation(mask, iterations=12) & ~ndimage.binary_dilation(mask, iterations=4)
  if reg.view is not None:
    near &= reg.view
  ys, xs = np.nonzero(near)
  close = np.hypot(xs - tip[0], ys - tip[1]) < 0.5 * length
  if close.sum() < 10:
    return tip
  film = float(np.median(g[ys[close], xs[close]]))
  steps = np.arange(-6, int(0.5 * length))
  pts = tip + steps[:, None] * out
  inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
  prof = np.full(len(steps), film)
  prof[inside] = ndimage.map_coordinates(g, [pts[inside, 1], pts[inside, 0]], order=1)
  tissue = float(np.median(prof[:6]))  # the last few pixels inside the mask
  if tissue - film < 0.02:
    return tip
  above = prof > (film + tissue) / 2
  end, gap = 0, 0
  for k in range(6, len(steps)):  # walk out; a dark joint space of up to 3 px is bridged
    if above[k]:
      end, gap = steps[k], 0
    else:
      gap += 1
      if gap > 3:
        break
  return tip + max(end, 0) * out


def _widest_limb(mask: np.ndarray, palm: np.ndarray, r: float) -> Optional[np.ndarray]:
  """float [2] unit vector from the palm to the widest run of the mask on a circle of radius
  2 palm radii (fingers cross it as narrow runs, the forearm as one wide run), or None when the
  circle is all hand or the widest run is not clearly the widest (under 1.5 times the next)."""
  t = np.linspace(-np.pi, np.pi, 360, endpoint=False)
  x, y = np.round(palm[0] + 2 * r * np.cos(t)).astype(int), np.round(palm[1] + 2 * r * np.sin(t)).astype(int)
  ok = (x >= 0) & (x < mask.shape[1]) & (y >= 0) & (y < mask.shape[0])
  on = np.zeros(len(t), bool)
  on[ok] = mask[y[ok], x[ok]]
  if on.all() or not on.any():
    return None
  start = int(np.argmin(on))  # walk the circle from a point off the hand
  runs, cur = [], []
  for k in range(len(t)):
    i = (start + k) % len(t)
    if on[i]:
      cur.append(i)
    elif cur:
      runs.append(cur)
      cur = []
  if cur:
    runs.append(cur)
  runs.sort(key=len)
  if len(runs) > 1 and len(runs[-1]) < 1.5 * len(runs[-2]):
    return None
  mid = runs[-1][len(runs[-1]) // 2]
  return np.array([np.cos(t[mid]), np.sin(t[mid])])


def hand_geometry(image: np.ndarray, *, where: str = "image", region: Optional[HandRegion] = None,
                  hand: str = "auto") -> HandGeometry:
  """Finds the hand mask, palm, arm direction, five fingertips and the thumb (see the module doc).

  Args:
    image: uint8 [H, W] radiograph, any size >= 128 px.
    hand: "auto", or the side every image shows ("left"/"right"), which then
      decides only when the thumb evidence is weak.
  Raises:
    LocalizationError naming `where` when no hand or not five fingertips are found.
  """
  if region is not None:
    return _geometry_of(region, where=where, hand=hand)
  first = None
  for level in MASK_LEVELS:  # touching fingers: a threshold nearer the bone level may part them
    try:
      return _geometry_of(hand_region(image, where=where, level=level), where=where, hand=hand)
    except LocalizationError as e:
      if first is None:
        first = e
      if e.roi == "hand" and level == MASK_LEVELS[0]:
        raise
  raise first


def _geometry_of(reg: HandRegion, *, where: str, hand: str) -> HandGeometry:
  """`hand_geometry` on one hand region."""
  mask, palm, r, s, prof, k, d = reg.mask, reg.palm, reg.radius, reg.scale, reg.profile, reg.bin_of, reg.dist
  xs, ys = reg.xy[:, 0], reg.xy[:, 1]
  bins = BINS
  peaks = _peaks(prof, MIN_REACH * r, MIN_DROP * r)
  pa = np.array([(p + 0.5) / bins * 2 * np.pi - np.pi for p in peaks])
  if reg.arm is not None:
    arms = [reg.arm]
  else:  # the whole hand is in the view: the arm is opposite the tallest peaks, or else the widest limb
    top = np.argsort(prof[peaks])[-5:] if peaks else []
    if len(top) == 0:
      raise LocalizationError(where, "hand", "no fingers stand out of the palm")
    arms = [-_unit(np.array([np.cos(pa[top]).sum(), np.sin(pa[top]).sum()]))]
    limb = _widest_limb(mask, palm, r)
    if limb is not None:
      arms.append(limb)
  for arm in arms:
    up = -arm
    rel = np.array([np.arctan2(np.sin(a - np.arctan2(up[1], up[0])), np.cos(a - np.arctan2(up[1], up[0])))
                    for a in pa])
    fingers = [(float(rr), p) for rr, p in zip(rel, peaks) if abs(rr) < np.radians(FINGER_SPAN)]
    fingers.sort()
    if len(fingers) >= 5:
      break
  if len(fingers) < 5:
    raise LocalizationError(where, "fingers", f"found {len(fingers)} fingertip(s), need 5 (fingers touching, "
                            "bent, cut off by the frame, or not a hand)")
  if len(fingers) > 5:  # several runs of five: the one reaching farthest
    best = max(range(len(fingers) - 4), key=lambda i: sum(prof[p] for _, p in fingers[i:i + 5]))
    fingers = fingers[best:best + 5]
  rel5 = np.array([f[0] for f in fingers])
  gaps = np.diff(rel5)
  tips = []
  for _, p in fingers:
    sel = k == p
    i = int(np.argmax(np.where(sel, d, -1)))
    tips.append([xs[i], ys[i]])
  tips = np.array(tips, np.float64)
  if reg.gray is not None:
    tips = np.array([_extend_tip(reg, t) for t in tips])
  # The thumb: the end finger set apart by the wider angular gap and reaching less far up the
  # hand's axis (its tip sits nearer the wrist).
  lift = (tips - palm) @ up / r
  score_first = gaps[0] / gaps.mean() - lift[0] / lift.max()
  score_last = gaps[-1] / gaps.mean() - lift[-1] / lift.max()
  # rel grows clockwise on screen (y down): the last finger is on the right of "up", where a left
  # hand seen from the back (PA, the bone-age standard view) has its thumb.  A right hand is
  # called only on clear evidence; otherwise the standard left hand is assumed, and said.
  margin = score_first - score_last
  mirrored = margin > THUMB_MARGIN
  doubt = ""
  if abs(margin) <= THUMB_MARGIN:
    mirrored = hand == "right"
    doubt = (f"thumb side uncertain (end gaps {np.degrees(gaps[0]):.0f} and {np.degrees(gaps[-1]):.0f} degrees): "
             + (f"taken from --hand {hand}" if hand != "auto" else "assumed a left hand"))
  if up[1] > UPSIDE_DOWN:   # image y grows downwards: the fingers point to the bottom edge
    doubt = "; ".join(n for n in (doubt, "the fingers point down (is the image upside down, or the hand's "
                                  "direction mistaken? check its boxes); the ROIs are cropped as found") if n)
  # The webs between neighbouring fingers: the outline's lowest point between their peaks.
  webs = []
  for (_, p0), (_, p1) in zip(fingers[:-1], fingers[1:]):
    span = np.arange(p0 + 1, p0 + ((p1 - p0) % BINS)) % BINS
    vb = int(span[np.argmin(prof[span])]) if len(span) else p0
    i = int(np.argmax(np.where(k == vb, d, -1)))
    webs.append([xs[i], ys[i]])
  webs = np.array(webs, np.float64)
  # The knuckle line's centre: the three webs between the four fingers (not the thumb's web).
  knuckles = webs[1:].mean(0) if mirrored else webs[:3].mean(0)
  if not mirrored:
    tips = tips[::-1]
  return HandGeometry((tips + 0.5) / s - 0.5, (palm + 0.5) / s - 0.5, r / s, arm, mirrored, mask, s, doubt,
                      float(margin), (knuckles + 0.5) / s - 0.5)


WHOLE_ROIS = ("whole_hand",)


@dataclasses.dataclass(frozen=True)
class Found:
  """Located ROIs of one image.  centres: float [R, 2] (x, y) in original pixels."""
  roi_names: tuple[str, ...]
  centres: np.ndarray
  geometry: HandGeometry
  note: str = ""

  def rows(self, image_id: str) -> list[tuple]:
    """(image_id, roi, x, y, note) per ROI, for the centres CSV."""
    return [(image_id, n, float(x), float(y), self.note) for n, (x, y) in zip(self.roi_names, self.centres)]


def thumb_side(geo: HandGeometry) -> np.ndarray:
  """float [2] unit vector across the hand towards the thumb."""
  up = -geo.arm
  right = np.array([-up[1], up[0]])
  return -right if geo.mirrored else right


def finger_frame(geo: HandGeometry, finger: int) -> tuple[np.ndarray, np.ndarray, float]:
  """(tip [2], axis [2] unit vector down the finger, scale) of finger 0..4 (thumb..little).

  The scale is the tip's distance from the knuckle line's centre (for the
  thumb, the distance from its tip to the index finger's tip; the distance
  from the palm centre when the webs were not found).

  The axis is the principal direction of the hand mask in a disk of radius
  0.35 x length centred 0.35 of the way from the tip to the palm, so a finger
  that does not point at the palm centre keeps its own line.  (The disk's
  size was chosen among four on the boxed images' held-out figures.)  The
  thumb's axis then follows its midline (`_midline_axis`) out to
  THUMB_MIDLINE x scale, as the disk can take in the palm beside it.
  """
  tip = geo.tips[finger]
  v = geo.palm - tip
  length = float(np.linalg.norm(v))
  # The joints are scaled by the tip's distance from the knuckle line, not from the palm centre:
  # a mask that takes in soft tissue or film below the hand moves the palm centre, not the webs.
  scale = length
  if geo.knuckles is not None:
    scale = float(np.linalg.norm(geo.knuckles - tip))
    if finger == 0:  # the thumb stands off the knuckle line: its distance from the index tip
      scale = float(np.linalg.norm(geo.tips[1] - tip))
  s = geo.work_scale
  c = ((tip + 0.35 * v) + 0.5) * s - 0.5
  rad = 0.35 * length * s
  h, w = geo.mask.shape
  y0, y1 = max(0, int(c[1] - rad)), min(h, int(c[1] + rad) + 1)
  x0, x1 = max(0, int(c[0] - rad)), min(w, int(c[0] + rad) + 1)
  ys, xs = np.nonzero(geo.mask[y0:y1, x0:x1])
  pts = np.stack([xs + x0, ys + y0], 1).astype(np.float64)
  pts = pts[np.hypot(*(pts - c).T) <= rad]
  axis = _unit(v)
  if len(pts) >= 10:
    evals, evecs = np.linalg.eigh(np.cov((pts - pts.mean(0)).T))
    a = evecs[:, -1]
    if evals[-1] > 2 * evals[0]:  # elongated enough to have a direction
      axis = a if a @ v > 0 else -a
  if finger == 0:  # the thumb leaves the palm at an angle: follow its own midline
    axis = _midline_axis(geo.mask, (tip + 0.5) * s - 0.5, axis, THUMB_MIDLINE * scale * s)
  return tip, axis, scale


def _midline_axis(mask: np.ndarray, tip: np.ndarray, axis: np.ndarray, reach: float) -> np.ndarray:
  """float [2] unit vector: the direction of a finger's midline from `tip` (work pixels).

  Cross-sections of the mask perpendicular to `axis` are taken every pixel out to `reach`; the
  centre of the run through each is a midline point, until the run widens to twice the finger's
  width (the palm).  A line through the midline points gives the direction.
  """
  n = np.array([-axis[1], axis[0]])
  h, w = mask.shape
  across = np.arange(-reach / 2, reach / 2 + 0.5, 0.5)
  mids, widths = [], []
  for d in np.arange(2.0, reach, 1.0):
    c = tip + d * axis
    pts = c[None] + across[:, None] * n
    xi, yi = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    on = np.zeros(len(across), bool)
    on[ok] = mask[yi[ok], xi[ok]]
    k0 = int(np.argmin(np.abs(across)))
    if not on[k0]:
      break
    lo, hi = k0, k0
    while lo > 0 and on[lo - 1]:
      lo -= 1
    while hi < len(on) - 1 and on[hi + 1]:
      hi += 1
    width = (hi - lo) * 0.5
    if widths and width > 2 * np.median(widths) and len(widths) >= 4:
      break
    widths.append(width)
    mids.append(c + (across[lo] + across[hi]) / 2 * n)
  if len(mids) < 4:
    return axis
  pts = np.array([tip] + mids)
  evals, evecs = np.linalg.eigh(np.cov((pts - pts.mean(0)).T))
  a = evecs[:, -1]
  return a if a @ axis > 0 else -a


def joint_position(geo: HandGeometry, finger: int, tu: np.ndarray) -> np.ndarray:
  """float [2]: tip + scale * (t * axis + u * normal) (normal towards the thumb side; see finger_frame)."""
  tip, axis, length = finger_frame(geo, finger)
  n = np.array([-axis[1], axis[0]])
  if float(n @ thumb_side(geo)) < 0:
    n = -n
  return tip + length * (tu[0] * axis + tu[1] * n)


def joint_coordinates(geo: HandGeometry, finger: int, xy: np.ndarray) -> np.ndarray:
  """The inverse of `joint_position`: float [2] (t, u) of point `xy` in finger `finger`'s frame."""
  tip, axis, length = finger_frame(geo, finger)
  n = np.array([-axis[1], axis[0]])
  if float(n @ thumb_side(geo)) < 0:
    n = -n
  d = (np.asarray(xy, np.float64) - tip) / length
  return np.array([d @ axis, d @ n])


HANDS = ("auto", "left", "right")


def check_hand(geo: HandGeometry, hand: str, where: str) -> None:
  """With hand "left" or "right" (the side every image should show), a hand seen as the other
  side is a failure: either the side or the thumb was mis-found, and the crops would be wrong."""
  if hand not in HANDS:
    raise ValueError(f"hand must be one of {HANDS}, got {hand!r}")
  seen = "right" if geo.mirrored else "left"
  if hand != "auto" and seen != hand:
    raise LocalizationError(where, "thumb", f"the thumb sits where a {seen} hand's would, but every image "
                            f"should show a {hand} hand (--hand {hand}): thumb or fingers mis-found")


def locate(image: np.ndarray, *, where: str = "image", model: Optional[dict] = None,
           rois: tuple[str, ...] = JOINT_ROIS, hand: str = "auto") -> Found:
  """The six joint ROI centres of a hand radiograph (original pixels).

  Args:
    image: uint8 [H, W].
    model: {roi: (t, u)}; the shipped shape model when None.
    hand: "auto" (a right hand is mirrored into a left one, and said), or
      "left"/"right": the side every image shows (the other side is a failure).
  Raises:
    LocalizationError naming `where`, the ROI and the reason.
  """
  geo = hand_geometry(image, where=where, hand=hand)
  check_hand(geo, hand, where)
  model = load_shape_model() if model is None else model
  h, w = image.shape
  centres = np.array([joint_position(geo, FINGER_OF[r], model[r]) for r in rois])
  # A gross error puts a joint off the hand; the mask may miss faint soft tissue at the hand's edge,
  # so a joint may sit up to OUTLINE_SLACK palm radii outside it.
  slack = max(3, int(round(OUTLINE_SLACK * geo.palm_radius * geo.work_scale)))
  near = ndimage.distance_transform_edt(~geo.mask) <= slack
  for name, (x, y) in zip(rois, centres):
    if not (0 <= x < w and 0 <= y < h):
      raise LocalizationError(where, name, f"the joint would lie outside the image at ({x:.0f}, {y:.0f})")
    wx, wy = (np.array([x, y]) + 0.5) * geo.work_scale - 0.5
    if not near[min(int(round(wy)), near.shape[0] - 1), min(int(round(wx)), near.shape[1] - 1)]:
      raise LocalizationError(where, name, f"the joint would fall outside the hand's outline at ({x:.0f}, {y:.0f}) "
                              "(a finger or the thumb was mis-found)")
  note = "right hand (thumb on the left with the fingers up): joints named as on a left hand" if geo.mirrored else ""
  return Found(tuple(rois), centres, geo, "; ".join(n for n in (note, geo.doubt) if n))


def whole_hand(image: np.ndarray, *, where: str = "image", size: int = 64,
               hand: str = "auto") -> tuple[np.ndarray, Found]:
  """One normalised view of the whole hand: uint8 [size, size].

  The hand is turned so its arm points down (fingers up), a right hand found
  confidently (five fingertips, thumb told apart) is mirrored into a left one,
  then the square around the hand mask is scaled to `size` and its grey levels
  stretched between the hand's 1st and 99th percentiles.  Only a missing hand
  is a failure; fingertips are not needed.
  """
  reg = hand_region(image, where=where)
  note = ""
  try:
    geo = hand_geometry(image, where=where, region=reg, hand=hand)
    arm, mirrored = geo.arm, geo.mirrored
    if hand != "auto":  # the side is known: only turn the view, never mirror it
      mirrored = hand == "right"
  except LocalizationError as e:
    arm, mirrored, geo = reg.arm, False, None
    note = f"fingers not resolved ({e.reason}): not checked for a right hand"
  small = np.asarray(Image.fromarray(image).resize(reg.mask.shape[::-1], Image.BILINEAR), np.float32)
  sm, mm = small, reg.mask
  if arm is not None:
    # ndimage.rotate turns the picture counter-clockwise on screen by `angle`; the arm should point down.
    angle = np.degrees(np.arctan2(arm[1], arm[0])) - 90.0
    sm = ndimage.rotate(small, angle, reshape=True, order=1)
    mm = ndimage.rotate(reg.mask.astype(np.float32), angle, reshape=True, order=0) > 0.5
  if mirrored:
    sm, mm = sm[:, ::-1], mm[:, ::-1]
    note = "right hand: mirrored into a left one"
  ys, xs = np.nonzero(mm)
  x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
  side = int(max(x1 - x0, y1 - y0) * 1.04) + 1
  big = np.pad(sm, side)
  xa = int(round((x0 + x1) / 2 - side / 2)) + side
  ya = int(round((y0 + y1) / 2 - side / 2)) + side
  view = big[ya:ya + side, xa:xa + side]
  lo, hi = np.percentile(sm[mm], [1, 99])
  view = np.clip((view - lo) / max(hi - lo, 1e-6), 0, 1) * 255
  out = np.asarray(Image.fromarray(view.astype(np.uint8)).resize((size, size), Image.BILINEAR))
  palm = (reg.palm + 0.5) / reg.scale - 0.5
  return out, Found(WHOLE_ROIS, palm[None], geo, note)
