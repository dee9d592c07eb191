"""One error model for the whole project.

Every problem a user can fix (a bad option, a missing or damaged file, a
workdir of another configuration) raises a subclass of `UserError` whose
message names the file or option and says what is wrong.  `cli.main` catches
these once, prints `error: <message>` and returns 2; anything else is a bug and
keeps its traceback.  The dataset readers in `data/` raise `data.errors.
DataError`, which is caught the same way (`USER_ERRORS`).
"""
import sys

from maml_jax.data.errors import DataError


class UserError(ValueError):
  """Bad input a user can fix; the message names the file or option and the problem."""


USER_ERRORS = (UserError, DataError)


def report(e: BaseException) -> int:
  """Prints a user error for the command line (no traceback); returns the exit status 2."""
  print(f"error: {e}", file=sys.stderr)
  return 2
