"""Reads PyTorch checkpoint files (`torch.save` output) without PyTorch.

Two on-disk formats exist:

* zip (torch >= 1.6): a zip archive with one top folder `<name>/` holding
  `data.pkl` (the pickled object), `data/<key>` (the raw bytes of each storage),
  `version`, and since torch 1.10 `byteorder`.
* legacy (older torch, or `_use_new_zipfile_serialization=False`): five
  pickles back to back - the magic number, the protocol version (1001), a
  `sys_info` dict (byte order, type sizes), the object itself, then the list of
  storage keys - followed by each storage as an int64 element count and its raw
  bytes, in the order of that list.

In both, a tensor pickles as a call of `torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, ...)` and a storage as a persistent id
`('storage', <torch.FloatStorage class>, key, location, numel[, view])`.

Pickles can run arbitrary code, so the unpickler here knows only the few names a
state dict of tensors needs (the rebuild functions, `OrderedDict` and the storage
types); any other name - a pickled `nn.Module`, an optimizer, a `numpy`
object - is refused with an error that names it.  Nothing is imported from
the file.  Only the storages that the kept tensors use are read.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any, Callable

import numpy as np

from maml_jax.errors import UserError

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype ('bfloat16' is widened to float32).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("float32"),
    "DoubleStorage": np.dtype("float64"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
    "UntypedStorage": np.dtype("uint8"),
}


class TorchFileError(UserError):
  """A torch file that cannot be read, or holds something other than tensors."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str

  @property
  def dtype(self):
    return STORAGE_DTYPES[self.name]

  @property
  def itemsize(self) -> int:
    return 2 if self.name == "BFloat16Storage" else self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  key: str
  stype: _StorageType
  numel: int
  # Legacy files may pickle views of a storage: (view_key, offset, size).
  view_offset: int = 0


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  if not isinstance(storage, _StorageRef):
    raise TorchFileError(f"a tensor is rebuilt from {type(storage).__name__}, not a storage")
  return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                    tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  return data


# The whole vocabulary of names a state dict of tensors needs.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_ALLOWED.update({("torch", n): _StorageType(n) for n in STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles only the names in `_ALLOWED`; storages come back as references."""

  def __init__(self, file, where: str):
    super().__init__(file, encoding="latin1")
    self.where = where

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise TorchFileError(
          f"{self.where}: refusing to unpickle {module}.{name}; only state dicts of "
          "tensors are read (save `model.state_dict()`, not the model or optimizer)") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise TorchFileError(f"{self.where}: unknown persistent id {pid!r:.80}")
    stype, key, _location, numel = pid[1:5]
    if not isinstance(stype, _StorageType):
      raise TorchFileError(f"{self.where}: storage of unknown type {stype!r:.80}")
    view = pid[5] if len(pid) > 5 else None
    if view is not None:
      # Legacy storage view: the tensor lives in the storage `key` from `offset`.
      _view_key, offset, view_size = view
      return _StorageRef(str(key), stype, int(numel), int(offset))
    return _StorageRef(str(key), stype, int(numel))


def _unpickle(file, where: str):
  try:
    return _RestrictedUnpickler(file, where).load()
  except TorchFileError:
    raise
  except Exception as e:  # a truncated or non-pickle file
    raise TorchFileError(f"{where}: not a readable torch pickle ({type(e).__name__}: {e})") from e


def _walk(obj, fn: Callable[[_TensorRef, str], Any], prefix: str = ""):
  """Rebuilds `obj` (dicts, lists, tuples) with each tensor ref replaced by fn(ref, name).

  `name` is the '.'-joined path of dict keys and list indices down to the tensor.
  """
  join = lambda k: f"{prefix}.{k}" if prefix else str(k)
  if isinstance(obj, _TensorRef):
    return fn(obj, prefix)
  if isinstance(obj, dict):
    out = type(obj)((k, _walk(v, fn, join(k))) for k, v in obj.items())
    if getattr(obj, "__dict__", None):
      out.__dict__.update(obj.__dict__)   # e.g. a state dict's `_metadata`
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_walk(v, fn, join(i)) for i, v in enumerate(obj))
  return obj


def _to_array(ref: _TensorRef, raw: bytes, big_endian: bool, where: str) -> np.ndarray:
  """Views `raw` (one storage's bytes) as the tensor `ref`, copied contiguous."""
  st = ref.storage.stype
  n = len(raw) // st.itemsize
  if st.name == "BFloat16Storage":
    u = np.frombuffer(raw, ">u2" if big_endian else "<u2", count=n)
    flat = (u.astype(np.uint32) << 16).view(np.float32)
  else:
    flat = np.frombuffer(raw, st.dtype.newbyteorder(">" if big_endian else "<"), count=n)
  native = flat.dtype.newbyteorder("=")
  start = ref.storage.view_offset + ref.offset
  if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or start < 0:
    raise TorchFileError(f"{where}: negative size, stride or offset {ref.size} {ref.stride} {start}")
  if len(ref.size) != len(ref.stride):
    raise TorchFileError(f"{where}: size {ref.size} and stride {ref.stride} differ in rank")
  if 0 in ref.size:
    return np.zeros(ref.size, native)
  if int(np.prod([float(k) for k in ref.size])) > n:   # only an expanded view (stride 0) has more
    raise TorchFileError(f"{where}: tensor of size {ref.size} has more elements than its storage ({n}); "
                         f"expanded views are not read (they could ask for any amount of memory)")
  last = start + sum((k - 1) * s for k, s in zip(ref.size, ref.stride))
  if last >= n:
    raise TorchFileError(
        f"{where}: tensor of size {ref.size}, stride {ref.stride} at offset {start} runs past "
        f"the end of its storage ({n} elements; file truncated?)")
  view = np.lib.stride_tricks.as_strided(
      flat[start:], ref.size, tuple(s * flat.itemsize for s in ref.stride), writeable=False)
  return np.array(view, dtype=native, order="C")   # a copy (ascontiguousarray makes 0-d 1-d)


class _Reader:
  """Random access to a torch file's storages: `read(key) -> bytes`."""

  def __init__(self, path: str):
    self.path = path
    self.big_endian = False
    self._cache: dict[str, bytes] = {}

  def array(self, ref: _TensorRef) -> np.ndarray:
    key = ref.storage.key
    if key not in self._cache:
      self._cache[key] = self.read(ref.storage)
    return _to_array(ref, self._cache[key], self.big_endian, f"{self.path} [storage {key}]")


class _ZipReader(_Reader):

  def __init__(self, path: str, zf: zipfile.ZipFile):
    super().__init__(path)
    self.zf = zf
    names = zf.namelist()
    self.names = set(names)
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise TorchFileError(f"{path}: a zip torch file has one '<name>/data.pkl', found {pkls[:4]}")
    self.prefix = pkls[0][:-len("data.pkl")]
    if self.prefix + "byteorder" in self.names:
      self.big_endian = zf.read(self.prefix + "byteorder").strip() == b"big"
    self.obj = _unpickle(io.BytesIO(self._read(pkls[0])), path)

  def _read(self, member: str) -> bytes:
    # torch stores members uncompressed: one that inflates far beyond the
    # archive is a zip bomb, refused before it is read.
    info = self.zf.getinfo(member)
    if info.file_size > 64 * os.path.getsize(self.path) + (1 << 20):
      raise TorchFileError(f"{self.path}: member {member} claims {info.file_size} bytes, far more than the "
                           f"archive holds; refused")
    try:
      return self.zf.read(member)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
      raise TorchFileError(f"{self.path}: cannot read member {member} ({type(e).__name__}: {e})") from None

  def read(self, storage: _StorageRef) -> bytes:
    member = f"{self.prefix}data/{storage.key}"
    if member not in self.names:
      raise TorchFileError(f"{self.path}: storage '{storage.key}' is missing (no member {member})")
    return self._read(member)


class _LegacyReader(_Reader):

  def __init__(self, path: str, f):
    super().__init__(path)
    self.f = f
    magic = _unpickle(f, path)
    if magic != LEGACY_MAGIC:
      raise TorchFileError(f"{path}: not a torch file (bad magic number {magic!r:.40})")
    protocol = _unpickle(f, path)
    if protocol != LEGACY_PROTOCOL:
      raise TorchFileError(f"{path}: legacy torch protocol {protocol!r}, expected {LEGACY_PROTOCOL}")
    sys_info = _unpickle(f, path)
    if isinstance(sys_info, dict):
      self.big_endian = not sys_info.get("little_endian", True)
    self.obj = _unpickle(f, path)
    keys = _unpickle(f, path)
    if not isinstance(keys, list):
      raise TorchFileError(f"{path}: expected the list of storage keys after the object")
    itemsize = {}
    _walk(self.obj, lambda r, _: itemsize.setdefault(r.storage.key, r.storage.stype.itemsize))
    # Storages follow in the order of `keys`, each an int64 element count then
    # its bytes; only their positions are noted here, the bytes are read lazily.
    self.where: dict[str, tuple[int, int]] = {}
    fmt = ">q" if self.big_endian else "<q"
    for key in keys:
      head = f.read(8)
      if len(head) != 8:
        raise TorchFileError(f"{path}: file ends before storage '{key}'")
      if key not in itemsize:
        raise TorchFileError(f"{path}: storage '{key}' is stored but used by no tensor")
      count = struct.unpack(fmt, head)[0]
      if count < 0:
        raise TorchFileError(f"{path}: storage '{key}' has a negative element count {count}")
      nbytes = count * itemsize[key]
      self.where[str(key)] = (f.tell(), nbytes)
      f.seek(nbytes, os.SEEK_CUR)
    end = f.tell()
    f.seek(0, os.SEEK_END)
    if f.tell() < end:
      raise TorchFileError(f"{path}: file is truncated ({f.tell()} of {end} bytes)")

  def read(self, storage: _StorageRef) -> bytes:
    if storage.key not in self.where:
      raise TorchFileError(f"{self.path}: storage '{storage.key}' is used by a tensor but not stored")
    pos, nbytes = self.where[storage.key]
    self.f.seek(pos)
    return self.f.read(nbytes)


def load(path: str | os.PathLike, keep: Callable[[str], bool] | None = None) -> Any:
  """Unpickles a torch file; tensors come back as numpy arrays.

  Args:
    path: a file written by `torch.save` (zip or legacy format).
    keep: optional predicate on a tensor's name (dict keys joined by '.');
      tensors it rejects are not read and come back as None (VGG16's 400 MB
      classifier need not be read to get its convolutions).
  Returns:
    The saved object with every tensor replaced by a C-contiguous np.ndarray
    in native byte order (bfloat16 widened to float32).
  Raises:
    TorchFileError: the file is not a torch file, is truncated, or pickles
      anything other than containers of tensors.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no torch file at {path}")
  resolve = lambda reader: lambda ref, name: (
      reader.array(ref) if keep is None or keep(name) else None)
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as zf:
        reader = _ZipReader(path, zf)
        return _walk(reader.obj, resolve(reader))
    with open(path, "rb") as f:
      if f.read(2) not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise TorchFileError(f"{path}: neither a zip nor a legacy (pickle) torch file")
      f.seek(0)
      reader = _LegacyReader(path, f)
      return _walk(reader.obj, resolve(reader))
  except RecursionError:
    raise TorchFileError(f"{path}: containers nested too deeply to be a state dict") from None
  except zipfile.BadZipFile as e:
    raise TorchFileError(f"{path}: damaged zip archive ({e})") from None
  except OSError as e:   # e.g. a storage size in the file that no seek can reach
    raise TorchFileError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def load_state_dict(path: str | os.PathLike,
                    keep: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
  """Reads a torch state dict as a flat `{name: np.ndarray}`.

  Nested dicts are flattened with '.' (a checkpoint `{'state_dict': {...}}` gives
  names like 'state_dict.conv.weight'); non-tensor entries (an epoch counter)
  and tensors rejected by `keep` are dropped.
  """
  out: dict[str, np.ndarray] = {}

  def flatten(obj, prefix):
    if isinstance(obj, np.ndarray):
      out[prefix] = obj
    elif isinstance(obj, dict):
      for k, v in obj.items():
        flatten(v, f"{prefix}.{k}" if prefix else str(k))

  flatten(load(path, keep), "")
  if not out and keep is None:
    raise TorchFileError(f"{os.fspath(path)}: holds no tensors")
  return out
