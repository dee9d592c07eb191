"""Joint localisation on SYNTHETIC hand drawings with known joints (shifted, rotated, mirrored),
bad input to prepare-smi, bone-age stages, whole-hand mode, and prepare-smi -> adapt on real X-rays."""
import csv
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image, ImageDraw

from maml_jax import checkpoints
from maml_jax.cli import main
from maml_jax.config import get_preset
from maml_jax.models import build_model
from maml_jax.smi import images, localize, shards
from maml_jax.train_step import init_state

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "handxray")
# Finger directions (degrees clockwise from up) and tip distances from the palm centre, little .. thumb,
# for a SYNTHETIC left hand seen from the back, fingers up: the thumb is on the right.
ANGLES = (-34, -14, 2, 17, 62)
LENGTHS = (200, 232, 246, 228, 165)


def draw_hand(seed=0, size=(512, 512), centre=(256, 300)):
  """SYNTHETIC hand drawing: uint8 [H, W] and {roi: (x, y)} its known joint centres.

  Soft tissue (grey) around bones (bright) on a dark film; the arm leaves
  through the bottom edge.  The joints are placed where the shipped shape
  model puts them relative to their finger's tip, the palm centre and the
  knuckle line (the webs between the fingers), and the
  thumb is drawn through its two joints (a real thumb bends towards the
  wrist), so a correct localiser must land on them."""
  rng = np.random.default_rng(seed)
  w, h = size
  cx, cy = centre
  palm = np.array([cx, cy], np.float64)
  model = localize.load_shape_model()
  im = Image.new("L", (w, h), 20)
  d = ImageDraw.Draw(im)
  d.ellipse([cx - 78, cy - 80, cx + 78, cy + 80], fill=120)
  d.rectangle([cx - 48, cy, cx + 48, h], fill=120)
  tips, joints, lines = [], {}, []
  # The knuckle line's centre, as the localiser defines it: the mean of the three webs between the
  # four fingers, where two neighbouring finger strokes (24 px wide) part, or the palm's edge.
  webs = []
  for a0, a1 in zip(ANGLES[:3], ANGLES[1:4]):
    half = np.radians(a1 - a0) / 2
    mid = np.radians(a0) + half
    dist = max(79.0, 12.0 / np.sin(half))
    webs.append(palm + dist * np.array([np.sin(mid), -np.cos(mid)]))
  knuckles = np.mean(webs, 0)
  for k, (a, length) in enumerate(zip(ANGLES, LENGTHS)):
    t = np.radians(a)
    tip = palm + length * np.array([np.sin(t), -np.cos(t)])
    tips.append(tip)
    if k == 4:  # the thumb: tip -> IP -> MCP -> its base, joints from the model's frame
      axis = (palm - tip) / length
      n = np.array([-axis[1], axis[0]])
      n = n if n[0] > 0 else -n                    # towards the thumb side (right)
      scale = np.linalg.norm(tips[3] - tip)  # the thumb's scale: its tip to the index tip (localize.finger_frame)
      ip, mcp = (tip + scale * (model[r][0] * axis + model[r][1] * n) for r in ("thumb_ip", "thumb_mcp"))
      joints["thumb_ip"], joints["thumb_mcp"] = ip, mcp
      lines.append(([tuple(tip), tuple(ip), tuple(mcp), tuple(mcp + 0.9 * (mcp - ip))], 30))
    else:
      lines.append(([tuple(palm + 0.25 * (tip - palm)), tuple(tip)], 24))
  for pts, width in lines:
    d.line(pts, fill=120, width=width, joint="curve")
    x, y = pts[-1] if width == 24 else pts[0]
    d.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=120)
  for pts, _ in lines:  # bones, a little short of the tip
    q = list(pts) if len(pts) > 2 else [pts[0], tuple(np.array(pts[1]) + 10 * (np.array(pts[0]) - pts[1]) /
                                                       np.linalg.norm(np.array(pts[0]) - pts[1]))]
    if len(pts) > 2:
      q[0] = tuple(np.array(pts[0]) + 10 * (np.array(pts[1]) - pts[0]) / np.linalg.norm(np.array(pts[1]) - pts[0]))
    d.line(q, fill=220, width=8, joint="curve")
  for roi, finger in (("middle_dip", 2), ("middle_pip", 2), ("ring_dip", 1), ("ring_pip", 1)):
    tip = tips[finger]
    joints[roi] = tip + model[roi][0] * np.linalg.norm(knuckles - tip) * (palm - tip) / np.linalg.norm(palm - tip)
  a = np.asarray(im, np.float64) + rng.normal(0, 3, (h, w))
  return np.clip(a, 0, 255).astype(np.uint8), joints


def check(image, joints, where="SYNTHETIC"):
  """Every located joint within the 64x64-at-512 crop of its known centre."""
  found = localize.locate(image, where=where)
  fit = images.square_fit(image.shape)
  for name, c in zip(found.roi_names, found.centres):
    p, e = fit.to_square(c), fit.to_square(joints[name])
    assert np.abs(p - e).max() <= 32, (name, p, e)
  return found


def test_synthetic_hand_joints_are_found():
  image, joints = draw_hand()
  found = check(image, joints)
  assert not found.geometry.mirrored and found.note == ""


def test_shifted_hand_in_a_non_square_frame():
  image, joints = draw_hand(seed=1, size=(700, 600), centre=(420, 390))
  check(image, joints)


def test_hand_on_a_film_framed_by_a_light_box():
  # SYNTHETIC: the drawn film (dark, the hand on it) held in a bright light box that frames it on
  # every side; the arm runs to the film's lower edge.  The hand is found inside the film.
  film, joints = draw_hand(seed=2)
  image = np.full((700, 660), 200, np.uint8)
  image[90:602, 70:582] = film
  check(image, {r: c + np.array([70, 90]) for r, c in joints.items()})


def test_hand_on_a_film_running_off_a_light_box_image():
  # SYNTHETIC: the light box frames the film on three sides; the film (and the arm) run off the
  # image's lower edge.
  film, joints = draw_hand(seed=3)
  image = np.full((602, 660), 200, np.uint8)
  image[90:602, 70:582] = film
  check(image, {r: c + np.array([70, 90]) for r, c in joints.items()})


def test_thin_strip_joined_to_the_arm_is_not_the_arm():
  # SYNTHETIC: the whole hand inside a dark frame (the forearm ends short of the edge), and a
  # bright film edge, 16 px wide (6 at the working scale), joined to the forearm and running to
  # the image's left edge.
  hand, joints = draw_hand(seed=4)
  image = np.full((700, 600), 20, np.uint8)
  image[40:552, 44:556] = hand
  image[520:552] = 20  # the forearm ends inside the frame
  im = Image.fromarray(image)
  ImageDraw.Draw(im).line([(0, 420), (300, 515)], fill=120, width=16)
  found = check(np.asarray(im), {r: c + np.array([44, 40]) for r, c in joints.items()})
  assert found.geometry.arm[1] > 0.9, found.geometry.arm  # down the frame, not along the strip


def test_right_hand_is_detected_and_named_as_a_left_one():
  image, joints = draw_hand(seed=2)
  w = image.shape[1]
  flipped = {k: np.array([w - 1 - x, y]) for k, (x, y) in joints.items()}
  found = check(image[:, ::-1].copy(), flipped)
  assert found.geometry.mirrored and "right hand" in found.note


@pytest.mark.parametrize("k", [1, 3])
def test_hand_rotated_by_90_degrees(k):
  image, joints = draw_hand(seed=3)
  h, w = image.shape
  rot = np.rot90(image, k).copy()
  # np.rot90 turns counter-clockwise: (x, y) -> (y, w-1-x) once, (h-1-y, x) three times.
  f = (lambda x, y: (y, w - 1 - x)) if k == 1 else (lambda x, y: (h - 1 - y, x))
  check(rot, {n: np.array(f(*c)) for n, c in joints.items()})


def test_whole_hand_view_turns_the_arm_down():
  image, _ = draw_hand(seed=4)
  up, _ = localize.whole_hand(image)
  side, _ = localize.whole_hand(np.rot90(image).copy())
  assert up.shape == (64, 64) and up.dtype == np.uint8
  # Upright or turned, the arm ends at the bottom middle, and both views agree.
  for v in (up, side):
    assert v[-4:, 26:36].mean() > 50 and v[-4:, :8].mean() < 20 and v[:6, :6].mean() < 20
  assert np.abs(up.astype(int) - side.astype(int)).mean() < 10


# ---- prepare-smi through the command line ---------------------------------------------------------

def write_set(folder, n=3, extra=()):
  """SYNTHETIC hand PNGs + a bone-age labels CSV (no stage column)."""
  os.makedirs(folder / "img", exist_ok=True)
  ids = []
  for i in range(n):
    image, _ = draw_hand(seed=10 + i)
    Image.fromarray(image).save(folder / "img" / f"hand{i}.png")
    ids.append(f"hand{i}")
  with open(folder / "labels.csv", "w") as f:
    f.write("image_id,rsna_id,boneage_months,sex\n")
    for k, i in enumerate(list(ids) + list(extra)):
      f.write(f"{i},{100 + k},{30 + 40 * k},{'MF'[k % 2]}\n")
  return ids


def prep(tmp_path, *extra):
  return main(["prepare-smi", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "labels.csv"),
               "--out", str(tmp_path / "out"), "--no-progress", "--age-stages", "3", *extra])


def test_auto_rois_bone_age_stages_and_side_tables(tmp_path, capsys):
  write_set(tmp_path)
  assert prep(tmp_path, "--preview", str(tmp_path / "pv")) == 0
  out = capsys.readouterr().out
  assert "bone-age stages" in out and "NOT the paper's SMI stages" in out
  m = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert m["roi_names"] == list(localize.JOINT_ROIS) and m["label_scheme"]["kind"] == "bone_age_stages"
  data = shards.load_shards(str(tmp_path / "out"))
  assert data.patient_id.tolist() == ["100", "101", "102"]                   # rsna_id as the patient
  assert data.label.tolist() == [0, 1, 2]                                     # ages 30, 70, 110 in 3 stages
  rows = list(csv.DictReader(open(tmp_path / "out" / "rois_found.csv")))
  assert len(rows) == 18 and {r["roi"] for r in rows} == set(localize.JOINT_ROIS)
  assert (tmp_path / "pv" / "contact_sheet.png").is_file() and (tmp_path / "pv" / "hand0.png").is_file()


def test_whole_mode_gives_one_roi(tmp_path, capsys):
  write_set(tmp_path)
  assert prep(tmp_path, "--rois", "whole") == 0
  data = shards.load_shards(str(tmp_path / "out"))
  assert data.rois.shape == (3, 1, 64, 64) and data.roi_names == ("whole_hand",)


def expect_error(tmp_path, capsys, text, *extra):
  rc = prep(tmp_path, *extra)
  err = capsys.readouterr().err
  assert rc == 2 and "error: " in err and text in err, err
  assert not (tmp_path / "out").exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".out")]


@pytest.mark.parametrize("kind,text", [
    ("blank", "hand0.png: cannot locate hand: the image is blank"),
    ("noise", "hand0.png: cannot locate"),
    ("tiny", "hand0.png: the image is 100x90 pixels, smaller than 128 px"),
    ("corrupt", "hand0.png: cannot read the image"),
])
def test_bad_images_stop_with_a_named_error_or_are_excluded(tmp_path, capsys, kind, text):
  write_set(tmp_path)
  p = tmp_path / "img" / "hand0.png"
  if kind == "blank":
    Image.fromarray(np.full((300, 300), 90, np.uint8)).save(p)
  elif kind == "noise":  # not a hand: scattered speckle
    Image.fromarray((np.random.default_rng(0).random((300, 300)) > 0.5).astype(np.uint8) * 200).save(p)
  elif kind == "tiny":
    Image.fromarray(np.full((90, 100), 90, np.uint8)).save(p)
  else:
    p.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
  expect_error(tmp_path, capsys, text)
  assert prep(tmp_path, "--on-failure", "skip") == 0
  out = capsys.readouterr().out
  assert "excluded 1 image(s)" in out and "hand0" in out
  assert "hand0" in (tmp_path / "out" / "excluded.csv").read_text()
  assert shards.load_shards(str(tmp_path / "out")).num_images == 2


def test_sixteen_bit_png_hand_is_handled(tmp_path, capsys):
  write_set(tmp_path)
  image, _ = draw_hand(seed=10)
  Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "img" / "hand0.png")
  assert images.read_gray(str(tmp_path / "img" / "hand0.png")).max() > 200
  assert prep(tmp_path) == 0


def test_right_and_rotated_hands_are_handled_and_said(tmp_path, capsys):
  write_set(tmp_path)
  image, _ = draw_hand(seed=10)
  Image.fromarray(image[:, ::-1].copy()).save(tmp_path / "img" / "hand0.png")
  Image.fromarray(np.rot90(draw_hand(seed=11)[0]).copy()).save(tmp_path / "img" / "hand1.png")
  assert prep(tmp_path) == 0
  out = capsys.readouterr().out
  assert "hand0: right hand" in out and shards.load_shards(str(tmp_path / "out")).num_images == 3


def test_label_without_image_and_image_without_label(tmp_path, capsys):
  write_set(tmp_path, extra=["ghost"])
  Image.fromarray(draw_hand(seed=20)[0]).save(tmp_path / "img" / "stray.png")
  expect_error(tmp_path, capsys, "labels.csv: image 'ghost' has a label but no image file")
  assert prep(tmp_path, "--on-failure", "skip") == 0
  out = capsys.readouterr().out
  assert "skipped 1 image(s) without a label row, e.g. 'stray'" in out
  table = (tmp_path / "out" / "excluded.csv").read_text()
  assert "ghost" in table and "stray" in table


def test_template_name_column_names_the_rois(tmp_path):
  from maml_jax.smi import prepare
  (tmp_path / "t.csv").write_text("roi,name,x,y\n1,thumb_ip,10,20\n2,middle_dip,30,40\n")
  _, names, tmpl = prepare.read_centres(str(tmp_path / "t.csv"))
  assert names == ("thumb_ip", "middle_dip") and tmpl.tolist() == [[10, 20], [30, 40]]


def tiny_workdir(folder, ways):
  """A workdir with the tiny configuration's initial (0-step) checkpoint."""
  wd = str(folder)
  os.makedirs(wd)
  cfg = get_preset("tiny").replace(ways=ways)
  checkpoints.check_or_write_config(wd, cfg)
  model = build_model(cfg.model, cfg.ways, cfg.conv_impl, cfg.width)
  ck = checkpoints.Checkpoints(wd, 1)
  ck.save(init_state(model, cfg, jax.random.key(0), (cfg.image_size, cfg.image_size, cfg.channels)))
  ck.close()
  return wd


def test_predict_locates_joints_of_a_new_radiograph_and_previews_them(tmp_path, capsys):
  write_set(tmp_path, n=12)
  with open(tmp_path / "labels.csv", "w") as f:   # two bone-age stages of six SYNTHETIC hands each
    f.write("image_id,boneage_months\n" + "".join(f"hand{i},{20 if i < 6 else 150}\n" for i in range(12)))
  assert main(["prepare-smi", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "labels.csv"),
               "--out", str(tmp_path / "out"), "--no-progress", "--age-boundaries", "100"]) == 0
  wd = tiny_workdir(tmp_path / "run", ways=2)
  assert main(["adapt", "--workdir", wd, "--data", str(tmp_path / "out"), "--shots", "5", "--queries", "1",
               "--trials", "1", "--no-weighted", "--out", str(tmp_path / "rep"), "--save", str(tmp_path / "m")]) == 0
  new, _ = draw_hand(seed=99)
  Image.fromarray(new[:, ::-1].copy()).save(tmp_path / "new.png")   # a right hand, never seen
  capsys.readouterr()
  assert main(["predict", "--model", str(tmp_path / "m"), "--image", str(tmp_path / "new.png"),
               "--preview", str(tmp_path / "pv")]) == 0
  out = capsys.readouterr().out
  assert "new: right hand" in out and "new: stage" in out and (tmp_path / "pv" / "new.png").is_file()


# ---- real X-rays: prepare-smi then adapt (skipped without ../shared) --------------------------------

@pytest.mark.skipif(not os.path.isdir(SHARED), reason="needs ../shared/data/handxray")
@pytest.mark.parametrize("mode", ["whole", "auto"])
def test_real_xrays_prepare_then_adapt(tmp_path, capsys, mode):
  rows = list(csv.DictReader(open(os.path.join(SHARED, "labels.csv"))))
  rows = [r for r in rows if r["squashed_299"] == "0"][:40]
  os.makedirs(tmp_path / "img")
  for r in rows:
    os.symlink(os.path.abspath(os.path.join(SHARED, "images", r["image_id"] + ".png")),
               tmp_path / "img" / (r["image_id"] + ".png"))
  with open(tmp_path / "labels.csv", "w") as f:
    f.write("image_id,rsna_id,boneage_months,sex\n")
    f.writelines(f"{r['image_id']},{r['rsna_id']},{r['boneage_months']},{r['sex']}\n" for r in rows)
  assert main(["prepare-smi", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "labels.csv"),
               "--out", str(tmp_path / "out"), "--rois", mode, "--on-failure", "skip", "--age-stages", "2",
               "--no-progress"]) == 0
  data = shards.load_shards(str(tmp_path / "out"))
  assert data.num_images >= 20 and len(data.roi_names) == (1 if mode == "whole" else 6)
  wd = tiny_workdir(tmp_path / "run", ways=2)
  counts = data.counts()
  q = int(min(counts)) - 5
  assert main(["adapt", "--workdir", wd, "--data", str(tmp_path / "out"), "--shots", "5", "--queries", str(q),
               "--trials", "1", "--no-weighted", "--out", str(tmp_path / "rep")]) == 0
  assert (tmp_path / "rep" / "metrics.json").is_file()


def test_uniform_noise_is_refused_as_not_a_radiograph():
  # 512x512 uniform noise used to pass every later check once `work_image` had
  # blurred it into blobs.
  noise = (np.random.default_rng(0).random((512, 512)) * 255).astype(np.uint8)
  with pytest.raises(localize.LocalizationError, match="not a radiograph: neighbouring pixels correlate"):
    localize.locate(noise, where="noise.png")
  image, _ = draw_hand(seed=0)
  assert localize.pixel_correlation(image) > localize.MIN_PIXEL_CORRELATION


def test_an_upside_down_hand_is_noted_and_an_upright_one_is_not():
  image, joints = draw_hand(seed=5)
  assert "upside down" not in localize.locate(image).note
  h, w = image.shape
  turned = check(image[::-1, ::-1].copy(), {n: np.array([w - 1 - x, h - 1 - y]) for n, (x, y) in joints.items()})
  assert "the fingers point down (is the image upside down" in turned.note
