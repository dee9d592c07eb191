"""The project's file writing: everything goes through a temporary file and
`os.replace`, so an interrupted run leaves the old file or the new one, never
half of one.

The single-file writers and the cache folder rule live at the bottom of the
layering, in `maml_jax.data.files` (the dataset readers write caches with
them and import nothing from `maml_jax`); they are used from here.  This
module adds what only the rest of the project needs: whole output folders
that appear complete or not at all, and figures.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from typing import Iterator

from maml_jax.data.files import (atomic_path, cache_root, sha256_file, umask, write_bytes,  # noqa: F401
                                 write_json, write_npz, write_text)
from maml_jax.errors import UserError


class OutputPathError(UserError):
  """An output path that cannot be written: under a file, read-only, or a file where a folder goes."""


class OutputExistsError(OutputPathError):
  """An output folder that is not empty (or an output file that exists), without permission to replace it."""


def check_output_dir(path: str, option: str, overwrite: bool = False, ours: tuple[str, ...] = ()) -> None:
  """Refuses, before any work is done, an output folder the command may not or
  cannot write: one that exists as a file (never replaced), a non-empty one
  (unless `overwrite`, or unless it holds only files named in `ours`: the
  command's own earlier output), one under a file or on a read-only path."""
  full = os.path.abspath(path)
  if os.path.lexists(full) and not os.path.isdir(full):
    raise OutputPathError(f"{option} {path}: exists and is a file, not a folder; choose another path "
                          f"(the file is left as it is)")
  if os.path.isdir(full) and not overwrite:
    held = os.listdir(full)
    if held and not set(held) <= set(ours):
      raise OutputExistsError(f"{option} {path}: the folder exists and is not empty (pass --overwrite to "
                              f"replace it)")
  check_writable(os.path.dirname(full), option, path)
  if os.path.isdir(full):
    check_writable(full, option, path)


def check_output_file(path: str, option: str, overwrite: bool = False) -> None:
  """Refuses, before any work is done, an output file that exists (unless
  `overwrite`), is a folder, or lies under a file or on a read-only path."""
  full = os.path.abspath(path)
  if os.path.isdir(full):
    raise OutputPathError(f"{option} {path}: is a folder, not a file")
  if os.path.lexists(full) and not overwrite:
    raise OutputExistsError(f"{option} {path}: the file exists (pass --overwrite to replace it)")
  check_writable(os.path.dirname(full), option, path)


def check_writable(folder: str, option: str, shown: str) -> None:
  """OutputPathError unless `folder` (or its nearest existing ancestor, where
  the missing folders would be made) takes a new file.  Tried by writing one,
  as permissions alone do not tell (root, read-only mounts)."""
  anc = os.path.abspath(folder)
  while not os.path.lexists(anc):
    anc = os.path.dirname(anc)
  if not os.path.isdir(anc):
    raise OutputPathError(f"{option} {shown}: cannot be created: {anc} is a file")
  try:
    fd, probe = tempfile.mkstemp(prefix=".maml_jax_write_check.", dir=anc)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise OutputPathError(f"{option} {shown}: cannot write in {anc} ({e.strerror or e})") from None


def save_figure(fig, path: str, **kwargs) -> None:
  """`fig.savefig` through a temporary file (format taken from `path`)."""
  fmt = os.path.splitext(path)[1].lstrip(".") or "png"
  buf = io.BytesIO()
  fig.savefig(buf, format=fmt, **kwargs)
  write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary folder beside `path` that becomes `path` on success.

  On an exception the temporary folder is removed and `path` is untouched.  An
  existing non-empty `path` is replaced only when `overwrite` is set (checked
  before any work is done, so a refusal costs nothing).
  """
  path = os.path.abspath(path)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise OutputPathError(f"{path}: exists and is a file, not a folder; choose another path (the file is left "
                          f"as it is)")
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise OutputExistsError(f"{path}: the output folder exists and is not empty (pass --overwrite to replace it)")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  prefix = f".{os.path.basename(path)}.{os.getpid()}."
  remove_stale(parent, os.path.basename(path))
  tmp = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent)
  os.chmod(tmp, 0o777 & ~umask())   # mkdtemp makes 0700; the result follows the umask like any folder
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
