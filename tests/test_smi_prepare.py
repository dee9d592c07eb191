"""prepare-smi: crops centred where asked, padding, CSV forms, bad input."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from maml_jax.cli import main
from maml_jax.smi import images, prepare, shards
from maml_jax.smi.errors import SMIDataError

ROIS = ["thumb", "mid_distal", "mid_proximal"]


def parse(argv):
  """The command line of `prepare-smi` (run through the real dispatch, `cli.main`)."""
  return ["prepare-smi"] + argv


def make_set(folder, n=5, size=(512, 512)):
  """Images with a bright 3x3 mark at each ROI centre (elsewhere gray 60).

  Returns {image_id: [(x, y) per ROI]} in original pixels."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  w, h = size
  centres = {}
  for i in range(n):
    img = np.full((h, w), 60, np.uint8)
    c = [(int(rng.integers(40, w - 40)), int(rng.integers(40, h - 40))) for _ in ROIS]
    for x, y in c:
      img[y - 1:y + 2, x - 1:x + 2] = 255
    Image.fromarray(img).save(os.path.join(folder, f"img{i}.png"))
    centres[f"img{i}"] = c
  return centres


def write_labels(path, ids, stages, extra=""):
  with open(path, "w") as f:
    f.write("image_id,stage,patient_id" + extra + "\n")
    for i, s in zip(ids, stages):
      f.write(f"{i},{s},P{i}\n")


def write_long(path, centres):
  with open(path, "w") as f:
    f.write("image_id,roi,x,y\n")
    for i, cs in centres.items():
      for name, (x, y) in zip(ROIS, cs):
        f.write(f"{i},{name},{x},{y}\n")


def test_crops_are_centred_on_the_marks(tmp_path):
  centres = make_set(tmp_path / "img")
  write_labels(tmp_path / "labels.csv", centres, [1, 3, 5, 8, 11])
  write_long(tmp_path / "rois.csv", centres)
  data, summary = prepare.build(str(tmp_path / "img"), str(tmp_path / "labels.csv"), str(tmp_path / "rois.csv"),
                                progress=False)
  assert data.rois.shape == (5, 3, 64, 64) and data.roi_names == tuple(ROIS)
  for crop in data.rois.reshape(-1, 64, 64):
    assert (crop[31:34, 31:34] == 255).all()            # the mark, centred at (32, 32)
    assert (crop == 255).sum() == 9                     # and nothing else
  # Stages 1, 3, 5, 8, 11 merge to 1, 2, 3, 4, 5 (class indices 0..4).
  assert data.label.tolist() == [0, 1, 2, 3, 4] and summary.counts == [1, 1, 1, 1, 1]


def test_original_coordinates_are_scaled_to_512(tmp_path):
  centres = make_set(tmp_path / "img", n=2, size=(300, 200))
  write_labels(tmp_path / "labels.csv", centres, [1, 2])
  write_long(tmp_path / "rois.csv", centres)
  data, _ = prepare.build(str(tmp_path / "img"), str(tmp_path / "labels.csv"), str(tmp_path / "rois.csv"),
                          progress=False)
  for crop in data.rois.reshape(-1, 64, 64):
    mark = np.clip(crop.astype(float) - 60, 0, None)        # the resized mark, background removed
    yy, xx = np.mgrid[:64, :64]
    y, x = (mark * yy).sum() / mark.sum(), (mark * xx).sum() / mark.sum()
    assert abs(y - 32) <= 0.75 and abs(x - 32) <= 0.75, (x, y)
    assert mark[:20].sum() == 0 and mark[:, 44:].sum() == 0   # one compact mark


def test_zero_padding_at_the_border():
  img = np.full((512, 512), 200, np.uint8)
  crop = images.crop_rois(img, np.array([[5, 5], [510, 300]]), where="x.png")
  # Centre (5, 5): crop rows/columns 0..26 fall outside the image.
  assert (crop[0, :27] == 0).all() and (crop[0, :, :27] == 0).all() and (crop[0, 27:, 27:] == 200).all()
  # Centre x = 510: columns 510-32+j >= 512 for j >= 34.
  assert (crop[1, :, 34:] == 0).all() and (crop[1, :, :34] == 200).all()


def test_prepare_pads_crops_at_the_border(tmp_path):
  (tmp_path / "img").mkdir()
  img = np.full((512, 512), 60, np.uint8)
  img[507:510, 2:5] = 255                               # a mark at (x=3, y=508), near a corner
  Image.fromarray(img).save(tmp_path / "img" / "edge.png")
  write_labels(tmp_path / "labels.csv", ["edge"], [1])
  write_long(tmp_path / "rois.csv", {"edge": [(3, 508), (256, 256), (256, 256)]})
  data, _ = prepare.build(str(tmp_path / "img"), str(tmp_path / "labels.csv"), str(tmp_path / "rois.csv"),
                          progress=False)
  crop = data.rois[0, 0]
  assert (crop[31:34, 31:34] == 255).all()              # still centred on the mark
  assert (crop[:, :29] == 0).all() and (crop[36:] == 0).all()       # columns x < 0 and rows y >= 512
  assert (crop[:36, 29:] > 0).all()                     # everything inside the image is kept


def test_wide_and_template_forms_match_long(tmp_path):
  centres = make_set(tmp_path / "img", n=3)
  write_labels(tmp_path / "labels.csv", centres, [5, 5, 5], )
  write_long(tmp_path / "long.csv", centres)
  with open(tmp_path / "wide.csv", "w") as f:
    f.write("image_id," + ",".join(f"{r}_x,{r}_y" for r in ROIS) + "\n")
    for i, cs in centres.items():
      f.write(i + "," + ",".join(f"{x},{y}" for x, y in cs) + "\n")
  args = (str(tmp_path / "img"), str(tmp_path / "labels.csv"))
  long_d, _ = prepare.build(*args, str(tmp_path / "long.csv"), progress=False, stages="5")
  wide_d, _ = prepare.build(*args, str(tmp_path / "wide.csv"), progress=False, stages="5")
  np.testing.assert_array_equal(long_d.rois, wide_d.rois)
  # A template applies one set of centres to every image.
  first = centres["img0"]
  with open(tmp_path / "tmpl.csv", "w") as f:
    f.write("roi,x,y\n" + "".join(f"{r},{x},{y}\n" for r, (x, y) in zip(ROIS, first)))
  t, _ = prepare.build(*args, str(tmp_path / "tmpl.csv"), progress=False, stages="5")
  np.testing.assert_array_equal(t.rois[0], long_d.rois[0])
  assert (t.rois[0] == 255).sum() == 27 and (t.rois[1] == 255).sum() < 27


def test_command_writes_shards_and_summary(tmp_path, capsys):
  centres = make_set(tmp_path / "img")
  write_labels(tmp_path / "labels.csv", centres, [1, 2, 3, 9, 10])
  write_long(tmp_path / "rois.csv", centres)
  Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "img" / "unlabelled.png")
  rc = main(parse(["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "labels.csv"),
                               "--rois", str(tmp_path / "rois.csv"), "--out", str(tmp_path / "out")]))
  out = capsys.readouterr().out
  assert rc == 0 and "stage 1: 2" in out and "skipped 1 image" in out
  m = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert m["counts"] == [2, 1, 0, 1, 1]   # stages 1, 2, 3, 9, 10 and m["synthetic"] is False and m["roi_names"] == ROIS
  assert shards.load_shards(str(tmp_path / "out")).patient_id.tolist() == [f"Pimg{i}" for i in range(5)]


@pytest.fixture
def good_set(tmp_path):
  centres = make_set(tmp_path / "img", n=3)
  write_labels(tmp_path / "labels.csv", centres, [1, 4, 11])
  write_long(tmp_path / "rois.csv", centres)
  return tmp_path, centres


def run_bad(tmp_path, capsys, extra=()):
  rc = main(parse(["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "labels.csv"),
                               "--rois", str(tmp_path / "rois.csv"), "--out", str(tmp_path / "out"), *extra]))
  err = capsys.readouterr().err
  assert rc != 0 and "error: " in err and "Traceback" not in err
  assert not (tmp_path / "out").exists()            # nothing half-written
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".out")]
  return err


def test_corrupt_image(good_set, capsys):
  tmp_path, _ = good_set
  (tmp_path / "img" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
  err = run_bad(tmp_path, capsys)
  assert "img1.png: cannot read the image" in err


def test_roi_centre_outside_the_image(good_set, capsys):
  tmp_path, centres = good_set
  centres["img2"][1] = (600, 40)
  write_long(tmp_path / "rois.csv", centres)
  err = run_bad(tmp_path, capsys)
  assert "img2.png: ROI mid_distal centre (x=600, y=40) is outside the 512x512 image" in err


def test_stage_outside_the_scheme(good_set, capsys):
  tmp_path, centres = good_set
  write_labels(tmp_path / "labels.csv", centres, [1, 4, 12])
  err = run_bad(tmp_path, capsys)
  assert "labels.csv: stage 12 (row 3) is outside the mapping" in err
  write_labels(tmp_path / "labels.csv", centres, [1, 4, 6])
  err = run_bad(tmp_path, capsys, ["--stages", "5"])
  assert "stage 6 (row 3) is outside the mapping" in err


def test_label_without_image_and_image_without_centres(good_set, capsys):
  tmp_path, centres = good_set
  write_labels(tmp_path / "labels.csv", list(centres) + ["ghost"], [1, 4, 11, 2])
  assert "labels.csv: image 'ghost' has a label but no image file" in run_bad(tmp_path, capsys)
  write_labels(tmp_path / "labels.csv", centres, [1, 4, 11])
  write_long(tmp_path / "rois.csv", {k: v for k, v in centres.items() if k != "img0"})
  assert "rois.csv: image 'img0' has no ROI centres" in run_bad(tmp_path, capsys)


def test_bad_csv_columns(good_set, capsys):
  tmp_path, _ = good_set
  (tmp_path / "rois.csv").write_text("image,a,b\nimg0,1,2\n")
  assert "rois.csv: expected ROI columns" in run_bad(tmp_path, capsys)
  (tmp_path / "labels.csv").write_text("image_id,grade\nimg0,1\n")
  assert "labels.csv: the labels CSV needs a 'stage' column" in run_bad(tmp_path, capsys)


def test_existing_output_is_not_overwritten(good_set, capsys):
  tmp_path, _ = good_set
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("x")
  rc = main(parse(["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "labels.csv"),
                               "--rois", str(tmp_path / "rois.csv"), "--out", str(tmp_path / "out")]))
  assert rc != 0 and "--overwrite" in capsys.readouterr().err
  assert os.listdir(tmp_path / "out") == ["keep.txt"]


def test_sixteen_bit_png_is_scaled(tmp_path):
  a = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
  Image.fromarray(a).save(tmp_path / "x.png")
  g = images.read_gray(str(tmp_path / "x.png"))
  assert g.dtype == np.uint8 and g.min() == 0 and g.max() == 255


def test_dicom_without_pydicom_says_how_to_fix(tmp_path):
  if importlib.util.find_spec("pydicom") is not None:
    pytest.skip("pydicom is installed")
  (tmp_path / "x.dcm").write_bytes(b"\0" * 200)
  with pytest.raises(SMIDataError, match=r"x\.dcm: reading DICOM needs the optional package pydicom"):
    images.read_gray(str(tmp_path / "x.dcm"))
