"""Atomic file writing and checksums.

Everything the SMI pipeline writes goes to a temporary file in the destination
folder and is moved into place with `os.replace`, so an interrupted run leaves
either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

from maml_jax.smi.errors import SMIDataError


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; on success it replaces `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  os.close(fd)
  os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; the result follows the umask like any file
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """Uncompressed npz (ROIs are noisy; compression buys little and costs time)."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(path, buf.getvalue())


def save_figure(fig, path: str, **kwargs) -> None:
  """`fig.savefig` through a temporary file (format taken from `path`)."""
  fmt = os.path.splitext(path)[1].lstrip(".") or "png"
  buf = io.BytesIO()
  fig.savefig(buf, format=fmt, **kwargs)
  write_bytes(path, buf.getvalue())


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary folder beside `path` that becomes `path` on success.

  On an exception the temporary folder is removed and `path` is untouched.  An
  existing non-empty `path` is replaced only when `overwrite` is set (checked
  before any work is done, so a refusal costs nothing).
  """
  path = os.path.abspath(path)
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise SMIDataError(f"{path}: the output folder exists and is not empty (pass --overwrite to replace it)")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  prefix = f".{os.path.basename(path)}.{os.getpid()}."
  remove_stale(parent, os.path.basename(path))
  tmp = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent)
  os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes 0700; the result follows the umask like any folder
  try:
    yield tmp
    old = None
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=parent)
      os.rmdir(old)
      os.replace(path, old)
    os.replace(tmp, path)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def remove_stale(parent: str, name: str) -> list[str]:
  """Removes the temporary folders `atomic_dir` left beside `parent/name` when
  its process was killed (`.name.<pid>.*.tmp|.old` of a process that is gone);
  returns their paths."""
  gone = []
  for entry in os.listdir(parent):
    head = f".{name}."
    if not (entry.startswith(head) and entry.endswith((".tmp", ".old"))):
      continue
    pid = entry[len(head):].split(".", 1)[0]
    if not pid.isdigit() or _alive(int(pid)):
      continue
    full = os.path.join(parent, entry)
    shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
    gone.append(full)
  return gone


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # another user's process
    return True
  return True
