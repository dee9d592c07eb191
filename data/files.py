"""Atomic file writing, checksums and the user cache folder.

The bottom of the project's layering: the dataset readers in this package use
it, and `maml_jax.io` builds on it (this package imports nothing from
`maml_jax`).  Every write goes to a temporary file in the destination folder
and is moved into place with `os.replace`, so an interrupted run leaves either
the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np


def cache_root() -> str:
  """The folder for derived files (decoded Omniglot, the SMI demo data, compiled
  steps): $MAML_JAX_CACHE, else $XDG_CACHE_HOME/maml_jax, else ~/.cache/maml_jax."""
  return os.environ.get("MAML_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "maml_jax")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; on success it replaces `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  os.close(fd)
  os.chmod(tmp, 0o666 & ~umask())   # mkstemp makes 0600; the result follows the umask like any file
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def umask() -> int:
  """The process's file-creation mask (read without changing it for long)."""
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
  """The project's one JSON writer: indented, keys in the order given, atomic."""
  write_text(path, json.dumps(obj, indent=2) + "\n")


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """Uncompressed npz (image arrays compress little and decompress slowly)."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(path, buf.getvalue())


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
