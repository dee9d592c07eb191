"""The SMI pipeline's error type: a `maml_jax.errors.UserError`.

Every problem with a user's SMI data (an unreadable image, a shard failing its
checksum, a label outside the scheme, a class too small for the requested
shots) raises `SMIDataError` with a message that names the file and says what
is wrong; `cli.main` prints it and exits 2, without a traceback.
"""
from maml_jax.errors import UserError, report  # noqa: F401  (report: kept for the commands)


class SMIDataError(UserError):
  """Bad SMI input data; the message names the file and the problem."""
