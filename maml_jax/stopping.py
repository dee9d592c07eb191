"""When a training loop stops before its last step: a time budget spent, or Ctrl-C.

The loop asks one question at each step boundary, `StopRequests.reason()`;
on an answer it saves a checkpoint of that step and returns, and a later
`--resume` continues the same run bit-identically (`train.train_and_evaluate`).

* The time budget counts wall-clock minutes from the moment the run was
  started (`started`), set-up and compilation included, so that a run fits a
  fixed slot.  It is checked after each step, so at least one step runs.
* Ctrl-C (SIGINT) is caught only inside `with StopRequests(...,
  catch_interrupt=True)`: the first one asks for a stop at the next step
  boundary; a second one aborts at once (KeyboardInterrupt).  Where SIGINT is
  ignored (a background job of a non-interactive shell) or already handled by
  someone else, or off the main thread, nothing is installed.
"""
from __future__ import annotations

import signal
import threading
import time

INTERRUPTED = "interrupted"
TIME_BUDGET = "time budget"


class StopRequests:
  """`reason()`: None, or why the loop should stop at this step boundary."""

  def __init__(self, budget_minutes: float = 0.0, catch_interrupt: bool = False, started: float | None = None):
    start = time.monotonic() if started is None else started
    self.deadline = start + 60.0 * budget_minutes if budget_minutes > 0 else None
    self.catch_interrupt = catch_interrupt
    self.interrupted = False
    self._previous = None

  def __enter__(self) -> "StopRequests":
    if (self.catch_interrupt and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
      self._previous = signal.signal(signal.SIGINT, self._on_sigint)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None

  def _on_sigint(self, signum, frame) -> None:
    if self.interrupted:   # the second Ctrl-C: abort now, the default way
      self.__exit__()
      raise KeyboardInterrupt
    self.interrupted = True

  def reason(self) -> str | None:
    """INTERRUPTED after a caught Ctrl-C, TIME_BUDGET once the budget is spent, else None."""
    if self.interrupted:
      return INTERRUPTED
    if self.deadline is not None and time.monotonic() >= self.deadline:
      return TIME_BUDGET
    return None
