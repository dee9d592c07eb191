"""Seeded fuzzing of every file the project reads: only its own named errors come out.

Valid inputs are built small (a shard set, a saved SMI model, label and ROI
CSVs with PNG images, a checkpoint, a torch file), then mutated many times
(bytes flipped, files truncated, JSON values replaced by other types, keys
dropped, numbers made NaN/inf/huge, entries pointed outside their folder).
Each mutated input is read by the project's reader; the reader must either
accept it or raise a `UserError` / `DataError` (the errors `run.py` prints as
`error: ...`).  Anything else - a KeyError, TypeError, MemoryError, orbax's
own exceptions - fails the test, naming the mutation.  The count of mutated
inputs and the run time are printed (`pytest -s`).
"""
import copy
import json
import os
import shutil
import time
import zipfile

import jax
import numpy as np
import pytest

from maml_jax.data.errors import DataError
from maml_jax.errors import UserError

# orbax leaves a coroutine un-awaited when a damaged checkpoint fails to restore
# (its error reaches us as a CheckpointError); the warning, orbax's clean-up,
# surfaces at garbage collection, possibly in the next test.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SEED = 20260101
ALLOWED = (UserError, DataError)


def _flip(data: bytes, rng, k=None) -> bytes:
  b = bytearray(data)
  for _ in range(k or int(rng.integers(1, 16))):
    i = int(rng.integers(len(b)))
    b[i] = int(rng.integers(256))
  return bytes(b)


def _byte_mutations(path, rng, n):
  """n mutated copies' contents of the file: flips, truncations, empties, garbage."""
  data = open(path, "rb").read()
  out = []
  for i in range(n):
    kind = i % 4
    if kind == 0:
      out.append(_flip(data, rng))
    elif kind == 1:
      out.append(data[:int(rng.integers(len(data)))])
    elif kind == 2:
      out.append(data + _flip(data[:64], rng))
    else:
      out.append(bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8)))
  return out


WEIRD = [None, True, -1, 0, 2**63, 1e308, float("nan"), float("inf"), "", "../../outside.npz", "/etc/passwd",
         [], [1, "a"], {}, {"file": 1}, "x" * 300]


def _json_mutations(obj, rng, n):
  """n copies of a JSON object with one value (at any depth) replaced or removed."""
  paths = []
  def walk(o, p):
    paths.append(p)
    if isinstance(o, dict):
      for k, v in o.items():
        walk(v, p + (k,))
    elif isinstance(o, list):
      for i, v in enumerate(o[:3]):
        walk(v, p + (i,))
  walk(obj, ())
  out = []
  for _ in range(n):
    o = copy.deepcopy(obj)
    p = paths[int(rng.integers(len(paths)))]
    if not p:
      out.append(WEIRD[int(rng.integers(len(WEIRD)))])
      continue
    parent = o
    for k in p[:-1]:
      parent = parent[k]
    if rng.uniform() < 0.25 and isinstance(parent, dict):
      del parent[p[-1]]
    else:
      parent[p[-1]] = WEIRD[int(rng.integers(len(WEIRD)))]
    out.append(o)
  return out


class Tally:
  def __init__(self):
    self.tried, self.accepted, self.named, self.bad = 0, 0, 0, []

  def check(self, what, fn):
    self.tried += 1
    try:
      fn()
      self.accepted += 1
    except ALLOWED:
      self.named += 1
    except Exception as e:   # the point: anything not named is a finding
      self.bad.append(f"{what}: {type(e).__name__}: {str(e)[:200]}")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """Small valid inputs of every kind."""
  from maml_jax.smi import predictor, shards, synthetic
  from maml_jax.config import get_preset
  from maml_jax.models import build_model
  from maml_jax.train_step import init_state
  from maml_jax.checkpoints import Checkpoints, write_json
  root = tmp_path_factory.mktemp("fuzz_base")
  rng = np.random.default_rng(0)
  n = 10
  data = shards.SMIData(rois=rng.integers(0, 256, (n, 2, 64, 64), dtype=np.uint8), label=np.arange(n) % 5,
                        classes=tuple("12345"), roi_names=("roi1", "roi2"), synthetic=True,
                        age_months=np.full(n, 100.0, np.float32), sex=np.array(["F", "M"] * 5))
  shards.write_shards(str(root / "shards"), data, shard_size=4)
  cfg = get_preset("tiny").replace(ways=5, image_size=16)
  model = build_model(cfg.model, cfg.ways)
  state = init_state(model, cfg, jax.random.key(0), (16, 16, 1))
  predictor.save(str(root / "model"), config=cfg, params=state.meta_params["model"],
                 support_rois=data.rois[:5], support_y=data.label[:5], roi_names=data.roi_names,
                 classes=data.classes, weights=np.ones(2), per_roi=False, synthetic=True)
  imgs = root / "imgs"
  imgs.mkdir()
  from PIL import Image
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(imgs / f"x{i}.png")
  (root / "labels.csv").write_text("image_id,stage,sex,age_months\nx0,1,F,30\nx1,2,M,40\nx2,3,F,50\n")
  (root / "rois.csv").write_text("image_id,roi,x,y\n" + "".join(f"x{i},{r},{10 + r},{12 + r}\n"
                                                              for i in range(3) for r in (1, 2)))
  w = root / "run"
  w.mkdir()
  write_json(str(w / "config.json"), get_preset("tiny").to_dict())
  tiny = get_preset("tiny")
  ck = Checkpoints(str(w))
  ck.save(init_state(build_model(tiny.model, tiny.ways), tiny, jax.random.key(0), (12, 12, 1)))
  ck.close()
  from maml_jax.pretrained.torch_writer import save_state_dict
  save_state_dict({"a.weight": np.ones((3, 4), np.float32), "b": np.arange(5)}, str(root / "w.pt"))
  return root


def _mutated_copy(src, dst, rel, content):
  shutil.rmtree(dst, ignore_errors=True)
  shutil.copytree(src, dst)
  p = os.path.join(dst, rel)
  if content is None:
    os.remove(p)
  else:
    open(p, "wb").write(content if isinstance(content, bytes) else json.dumps(content).encode())
  return dst


def test_fuzz_readers_raise_only_named_errors(base, tmp_path, capsys):
  from maml_jax.smi import predictor, prepare, shards
  from maml_jax.checkpoints import load_trained
  from maml_jax.pretrained import torch_pickle
  rng = np.random.default_rng(SEED)
  t = Tally()
  t0 = time.time()
  scratch = str(tmp_path / "m")

  # Shard sets: the manifest (JSON values and bytes) and the shards (bytes, arrays).
  manifest = json.load(open(base / "shards" / "manifest.json"))
  for m in _json_mutations(manifest, rng, 120):
    d = _mutated_copy(base / "shards", scratch, "manifest.json", m)
    t.check(f"manifest {json.dumps(m)[:120]}", lambda: shards.load_shards(d))
  for content in _byte_mutations(base / "shards" / "manifest.json", rng, 30):
    d = _mutated_copy(base / "shards", scratch, "manifest.json", content)
    t.check("manifest bytes", lambda: shards.load_shards(d))
  for content in _byte_mutations(base / "shards" / "shard-00000.npz", rng, 30) + [None]:
    d = _mutated_copy(base / "shards", scratch, "shard-00000.npz", content)
    t.check("shard bytes", lambda: shards.load_shards(d, verify=False))
    t.check("shard bytes (verified)", lambda: shards.load_shards(d))

  # Saved models: model.json values, every file's bytes, parameter arrays.
  meta = json.load(open(base / "model" / "model.json"))
  for m in _json_mutations(meta, rng, 120):
    d = _mutated_copy(base / "model", scratch, "model.json", m)
    t.check(f"model.json {json.dumps(m)[:120]}", lambda: predictor.load(d))
  for rel in ("model.json", "params.npz", "support.npz"):
    for content in _byte_mutations(base / "model" / rel, rng, 16) + [None]:
      d = _mutated_copy(base / "model", scratch, rel, content)
      t.check(f"{rel} bytes", lambda: predictor.load(d))
  with np.load(base / "model" / "params.npz") as z:
    params = {k: z[k] for k in z.files}
  for i in range(30):
    p = dict(params)
    k = sorted(p)[i % len(p)]
    choice = i % 5
    if choice == 0:
      del p[k]
    elif choice == 1:
      p[k] = np.full_like(p[k], [np.nan, np.inf, -np.inf][i % 3])
    elif choice == 2:
      p[k] = p[k].reshape(-1)[:-1] if p[k].size > 1 else np.zeros((2, 2), np.float32)
    elif choice == 3:
      p[k] = p[k].astype(np.int32)
    else:
      p["extra/leaf"] = np.zeros(3, np.float32)
    d = _mutated_copy(base / "model", scratch, "params.npz", None)
    np.savez(os.path.join(d, "params.npz"), **p)
    t.check(f"params {k} mutation {choice}", lambda: predictor.load(d))

  # CSVs and images of prepare-smi.
  for which in ("labels.csv", "rois.csv"):
    text = open(base / which).read()
    lines = text.splitlines()
    variants = _byte_mutations(base / which, rng, 20)
    for v in ("nan", "inf", "-inf", "1e400", "", "abc", "3.5", "-7", "999999"):
      row = lines[1].split(",")
      row[int(rng.integers(1, len(row)))] = v
      variants.append("\n".join([lines[0], ",".join(row)] + lines[2:]).encode())
    variants += [(lines[0] + "\n").encode(), b"", (text + lines[1] + ",extra\n").encode(),
                 (text + "x0\n").encode(), text.replace("image_id", "id").encode()]
    for content in variants:
      d = _mutated_copy(base, scratch, which, content)
      t.check(f"{which} {content[:80]!r}", lambda: prepare.build(os.path.join(d, "imgs"),
                                                                 os.path.join(d, "labels.csv"),
                                                                 os.path.join(d, "rois.csv"), stages="5",
                                                                 progress=False))
  for content in _byte_mutations(base / "imgs" / "x0.png", rng, 20):
    d = _mutated_copy(base, scratch, "imgs/x0.png", content)
    t.check("png bytes", lambda: prepare.build(os.path.join(d, "imgs"), os.path.join(d, "labels.csv"),
                                               os.path.join(d, "rois.csv"), stages="5", progress=False))

  # Checkpoints: config.json values and bytes, every checkpoint file's bytes.
  cfgjson = json.load(open(base / "run" / "config.json"))
  for m in _json_mutations(cfgjson, rng, 30):
    d = _mutated_copy(base / "run", scratch, "config.json", m)
    t.check(f"config.json {json.dumps(m)[:100]}", lambda: load_trained(d, "latest"))
  ck_files = sorted(os.path.relpath(os.path.join(dp, f), base / "run")
                    for dp, _, fs in os.walk(base / "run" / "checkpoints") for f in fs)
  for i in range(24):
    rel = ck_files[i % len(ck_files)]
    content = _byte_mutations(base / "run" / rel, rng, 4)[i % 4] if i % 6 else None
    d = _mutated_copy(base / "run", scratch, rel, content)
    t.check(f"checkpoint file {rel}", lambda: load_trained(d, "latest"))

  # Torch files (pretrained weights).
  for content in _byte_mutations(base / "w.pt", rng, 40):
    d = _mutated_copy(base, scratch, "w.pt", content)
    t.check("torch file bytes", lambda: torch_pickle.load_state_dict(os.path.join(d, "w.pt")))

  took = time.time() - t0
  with capsys.disabled():
    print(f"\nfuzz: {t.tried} mutated inputs, {t.accepted} accepted, {t.named} named errors, "
          f"{len(t.bad)} other exceptions, {took:.1f} s")
  assert not t.bad, "\n".join(t.bad[:20])


def test_oversized_torch_inputs_raise_the_readers_error(tmp_path):
  from maml_jax.pretrained import torch_pickle
  from maml_jax.pretrained.torch_writer import View, save_state_dict
  p = str(tmp_path / "expanded.pt")   # a 10^12-element view of a 1-element storage
  save_state_dict({"a": np.ones(1, np.float32)}, p, views={"b": View("a", 0, (10**6, 10**6), (0, 0))})
  with pytest.raises(torch_pickle.TorchFileError, match="more elements than its storage"):
    torch_pickle.load_state_dict(p)
  import pickle
  n = 100_000   # a legacy file whose object nests 10^5 lists (written opcode by opcode: EMPTY_LIST, APPEND)
  deep = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
  with open(tmp_path / "deep.pt", "wb") as f:
    for obj in (torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL, {"little_endian": True}):
      pickle.dump(obj, f, protocol=2)
    f.write(deep)
    pickle.dump([], f, protocol=2)
  with pytest.raises(torch_pickle.TorchFileError):
    torch_pickle.load_state_dict(str(tmp_path / "deep.pt"))
  good, bomb = str(tmp_path / "good.pt"), str(tmp_path / "bomb.pt")   # a storage inflating 1000-fold
  save_state_dict({"a": np.ones(4, np.float32)}, good)
  with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as dst:
    for name in src.namelist():
      dst.writestr(name, b"\0" * (1 << 26) if "/data/" in name else src.read(name))
  with pytest.raises(torch_pickle.TorchFileError, match="claims"):
    torch_pickle.load(bomb)
