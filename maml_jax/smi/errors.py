"""The one exception type of the SMI pipeline.

Every problem with a user's data (an unreadable image, a shard failing its
checksum, a label outside the scheme, a class too small for the requested
shots) raises `SMIDataError` with a message that names the file and says what
is wrong; the commands print that message and exit non-zero, without a
traceback.
"""


class SMIDataError(ValueError):
  """Bad SMI input data; the message names the file and the problem."""


def report(e: Exception) -> int:
  """Prints a data error for the command line (no traceback); returns the exit status."""
  import sys
  print(f"error: {e}", file=sys.stderr)
  return 2
