"""The PyTorch-free reader and writer of torch checkpoint files (both formats)."""
import io
import pickle
import zipfile

import numpy as np
import pytest

from maml_jax.pretrained import torch_pickle, torch_writer


def _state():
  rng = np.random.RandomState(0)
  return {
      "conv.weight": rng.randn(4, 3, 3, 3).astype(np.float32),
      "conv.bias": rng.randn(4).astype(np.float32),
      "bn.num_batches_tracked": np.array(12, np.int64),   # 0-d, as torch stores it
      "half": rng.randn(5).astype(np.float16),
      "double_t": rng.randn(3, 5).T,                       # non-contiguous input
      "mask": np.array([True, False, True]),
      "codes": np.arange(-3, 3, dtype=np.int8).reshape(2, 3),
  }


@pytest.mark.parametrize("legacy", [False, True])
def test_round_trip_keeps_values_dtypes_and_shapes(tmp_path, legacy):
  state = _state()
  path = tmp_path / "w.pth"
  torch_writer.save_state_dict(state, path, legacy=legacy)
  assert zipfile.is_zipfile(path) != legacy
  back = torch_pickle.load_state_dict(path)
  assert list(back) == list(state)
  for k, v in state.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    np.testing.assert_array_equal(back[k], v)
    assert back[k].flags.c_contiguous


@pytest.mark.parametrize("legacy", [False, True])
def test_views_with_offset_and_strides(tmp_path, legacy):
  w = np.arange(24, dtype=np.float32).reshape(4, 6)
  views = {
      "w_t": torch_writer.View("w", 0, (6, 4), (1, 6)),        # transpose
      "w_slice": torch_writer.View("w", 8, (3, 3), (6, 1)),    # w[1:, 2:5]
      "w_every_other": torch_writer.View("w", 1, (4, 3), (6, 2)),
  }
  path = tmp_path / "v.pth"
  torch_writer.save_state_dict({"w": w}, path, legacy=legacy, views=views)
  back = torch_pickle.load_state_dict(path)
  np.testing.assert_array_equal(back["w_t"], w.T)
  np.testing.assert_array_equal(back["w_slice"], w[1:, 2:5])
  np.testing.assert_array_equal(back["w_every_other"], w[:, 1::2])


def test_view_past_the_storage_is_an_error(tmp_path):
  path = tmp_path / "bad.pth"
  torch_writer.save_state_dict({"w": np.zeros(6, np.float32)}, path,
                               views={"v": torch_writer.View("w", 4, (3,), (1,))})
  with pytest.raises(torch_pickle.TorchFileError, match="runs past the end of its storage"):
    torch_pickle.load_state_dict(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_keep_drops_tensors_without_reading_them(tmp_path, legacy):
  path = tmp_path / "w.pth"
  torch_writer.save_state_dict(_state(), path, legacy=legacy)
  back = torch_pickle.load_state_dict(path, keep=lambda name: name.startswith("conv."))
  assert sorted(back) == ["conv.bias", "conv.weight"]


def test_legacy_file_truncated_is_an_error(tmp_path):
  path = tmp_path / "w.pth"
  torch_writer.save_state_dict(_state(), path, legacy=True)
  data = path.read_bytes()
  path.write_bytes(data[:-10])
  with pytest.raises(torch_pickle.TorchFileError, match="truncated"):
    torch_pickle.load_state_dict(path)


class _Boom:
  """Pickles as a call of os.system: what a malicious checkpoint would hold."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    import os
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_arbitrary_code_is_refused(tmp_path, legacy):
  marker = tmp_path / "pwned"
  payload = {"w": _Boom(marker)}
  path = tmp_path / "evil.pth"
  if legacy:
    buf = io.BytesIO()
    for obj in (torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL, {"little_endian": True}, payload):
      pickle.dump(obj, buf, protocol=2)
    path.write_bytes(buf.getvalue())
  else:
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
  with pytest.raises(torch_pickle.TorchFileError, match="refusing to unpickle (posix|os|nt).system"):
    torch_pickle.load_state_dict(path)
  assert not marker.exists()


def test_not_a_torch_file(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("hello")
  with pytest.raises(torch_pickle.TorchFileError, match="neither a zip nor a legacy"):
    torch_pickle.load_state_dict(path)
  with pytest.raises(FileNotFoundError, match="no torch file"):
    torch_pickle.load_state_dict(tmp_path / "missing.pth")
