"""Progress for long work that reads well on a terminal and in a log file.

On a terminal (stderr is a TTY) `progress` is a tqdm bar.  Otherwise (CI,
`nohup`, output redirected to a file) a bar's carriage-return updates would
fill the log with noise, so it writes a few plain lines instead: one when the
work starts, about one per `LOG_FRACTION` of it, and one at the end with the
time taken and the last postfix (loss, accuracy).  Both forms take the same
calls: iterate it, or `update(n)`, `set_postfix(dict)`, `set_postfix_str(s)`,
`set_description(s)`, `write(line)`, `close()`, or use it as a context manager.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional

LOG_FRACTION = 0.25   # a log line at each quarter of the work


def is_terminal() -> bool:
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):
    return False


def progress(iterable: Optional[Iterable] = None, *, total: Optional[float] = None, desc: str = "",
             unit: str = "it", disable: bool = False, initial: float = 0, **tqdm_kwargs):
  """A progress bar (terminal) or a few log lines (otherwise); see the module docstring."""
  if total is None and iterable is not None and hasattr(iterable, "__len__"):
    total = len(iterable)
  if not disable and is_terminal():
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, **tqdm_kwargs)
  return LogProgress(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial)


class LogProgress:
  """Plain-line progress for logs: start, every LOG_FRACTION of `total`, end."""

  def __init__(self, iterable=None, *, total=None, desc="", unit="it", disable=False, initial=0, stream=None):
    self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "progress", unit
    self.disable, self.n, self.postfix = disable, initial, {}
    self.stream = stream if stream is not None else sys.stderr
    self._start, self._next, self._closed = time.monotonic(), initial, False
    if self.total:
      self._next = initial + LOG_FRACTION * self.total
    if not disable:
      of = f" ({self.total:g} {unit})" if self.total else ""
      self._write(f"{self.desc}: started{of}" + (f", resuming at {initial:g}" if initial else ""))

  def _write(self, line: str) -> None:
    print(line, file=self.stream, flush=True)

  def _status(self) -> str:
    done = f"{self.n:g}" + (f"/{self.total:g}" if self.total else "") + f" {self.unit}"
    extra = "".join(f" {k}={v}" if k else f" {v}" for k, v in self.postfix.items())
    return f"{self.desc}: {done} in {time.monotonic() - self._start:.0f} s{extra}"

  def update(self, n: float = 1) -> None:
    self.n += n
    if not self.disable and self.total and self.n >= self._next and self.n < self.total:
      self._write(self._status())
      while self._next <= self.n:
        self._next += LOG_FRACTION * self.total

  def set_postfix(self, postfix=None, refresh: bool = True, **kwargs) -> None:
    self.postfix = {**dict(postfix or {}), **kwargs}

  def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
    self.postfix = {"": s} if s else {}

  def set_description(self, desc: str = "", refresh: bool = True) -> None:
    self.desc = desc or self.desc

  def write(self, line: str) -> None:
    self._write(line)

  def close(self) -> None:
    if not self._closed and not self.disable:
      finished = not self.total or self.n >= self.total
      self._write(self._status() + (" (done)" if finished else " (stopped)"))
    self._closed = True

  def __iter__(self):
    for x in self.iterable:
      yield x
      self.update(1)
    self.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
