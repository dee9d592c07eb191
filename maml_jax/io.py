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

from maml_jax.data.files import (atomic_path, cache_root, sha256_file, write_bytes, write_json,  # noqa: F401
                                 write_npz, write_text)
from maml_jax.errors import UserError


class OutputExistsError(UserError):
  """An output folder that is not empty, without permission to replace it."""


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
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise OutputExistsError(f"{path}: the output folder exists and is not empty (pass --overwrite to replace it)")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
  try:
    yield tmp
    old = None
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".old", dir=parent)
      os.rmdir(old)
      os.replace(path, old)
    os.replace(tmp, path)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
