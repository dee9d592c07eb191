"""Writes state dicts of numpy arrays as PyTorch checkpoint files, without PyTorch.

The inverse of `torch_pickle`, in both of torch's formats, so that tests (and
users who want to hand weights back to PyTorch) can make real torch files:

* zip: `<name>/data.pkl` (pickle protocol 2), `<name>/data/<key>` (raw
  little-endian storage bytes), `<name>/byteorder`, `<name>/version`, as
  `torch.save` lays them out;
* legacy: magic number, protocol 1001, sys_info, the object, the storage keys,
  then each storage as an int64 element count and its bytes.

Each tensor is pickled as torch does it: `torch._utils._rebuild_tensor_v2(
storage, offset, size, stride, requires_grad, backward_hooks)` with the storage
as the persistent id `('storage', torch.<Type>Storage, key, 'cpu', numel)`.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import tempfile
import zipfile
from typing import Mapping, NamedTuple, Optional

import numpy as np

from maml_jax.pretrained.torch_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL

_STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage", np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage", np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage",
}


class View(NamedTuple):
  """A tensor that shares the storage of tensor `base`: size/stride/offset in elements."""
  base: str
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


class _Global(NamedTuple):
  module: str
  name: str


class _Storage(NamedTuple):
  key: str
  data: np.ndarray   # flat, the storage's elements


class _Tensor(NamedTuple):
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


class _TorchPickler(pickle._Pickler):  # the Python pickler: its dispatch table is extensible
  dispatch = pickle._Pickler.dispatch.copy()

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      stype = _Global("torch", _STORAGE_NAMES[obj.data.dtype])
      pid = ("storage", stype, obj.key, "cpu", obj.data.size)
      return pid + (None,) if self.legacy else pid
    return None

  def save_global_ref(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

  def save_tensor(self, obj):
    self.save(_Global("torch._utils", "_rebuild_tensor_v2"))
    self.save((obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict()))
    self.write(pickle.REDUCE)

  dispatch[_Global] = save_global_ref
  dispatch[_Tensor] = save_tensor


def _contiguous_stride(size):
  stride, acc = [], 1
  for s in reversed(size):
    stride.append(acc)
    acc *= max(s, 1)
  return tuple(reversed(stride))


def _build(state: Mapping[str, np.ndarray], views: Mapping[str, View]):
  """-> (OrderedDict name -> _Tensor, {key: flat little-endian array})."""
  storages, tensors = {}, collections.OrderedDict()
  for name, value in state.items():
    a = np.asarray(value)   # (not ascontiguousarray: it turns 0-d into 1-d)
    if a.dtype not in _STORAGE_NAMES:
      raise ValueError(f"'{name}': dtype {a.dtype} has no torch storage type")
    st = _Storage(str(len(storages)), a.reshape(-1).astype(a.dtype.newbyteorder("<")))
    storages[st.key] = st
    tensors[name] = _Tensor(st, 0, tuple(a.shape), _contiguous_stride(a.shape))
  for name, v in views.items():
    base = tensors[v.base].storage
    tensors[name] = _Tensor(base, v.offset, tuple(v.size), tuple(v.stride))
  return tensors, storages


def _atomic_write(path: str, data: bytes):
  d = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp's 0600 -> the usual mode of a new file
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def save_state_dict(state: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                    legacy: bool = False, views: Optional[Mapping[str, View]] = None,
                    archive_name: str = "archive") -> None:
  """Writes `state` (name -> array) as a torch state dict file, atomically.

  Args:
    state: arrays of a dtype torch stores (float16/32/64, int8..64, uint8, bool).
    legacy: the pre-1.6 format instead of zip.
    views: extra tensors that view another tensor's storage (for strided and
      offset tensors).
    archive_name: the zip's top folder (torch uses 'archive' or the file stem).
  """
  tensors, storages = _build(state, views or {})
  buf = io.BytesIO()
  if legacy:
    p = lambda obj: _TorchPickler(buf, legacy=True).dump(obj)
    p(LEGACY_MAGIC)
    p(LEGACY_PROTOCOL)
    p({"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
       "type_sizes": {"short": 2, "int": 4, "long": 4}})
    p(tensors)
    keys = sorted(storages)
    p(keys)
    for k in keys:
      data = storages[k].data
      buf.write(struct.pack("<q", data.size))
      buf.write(data.tobytes())
  else:
    pkl = io.BytesIO()
    _TorchPickler(pkl, legacy=False).dump(tensors)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
      zf.writestr(f"{archive_name}/data.pkl", pkl.getvalue())
      zf.writestr(f"{archive_name}/byteorder", "little")
      for k, st in storages.items():
        zf.writestr(f"{archive_name}/data/{k}", st.data.tobytes())
      zf.writestr(f"{archive_name}/version", "3\n")
  _atomic_write(os.fspath(path), buf.getvalue())
