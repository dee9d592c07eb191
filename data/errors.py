"""The base of every error the dataset readers raise for bad input.

`data/` depends on nothing in `maml_jax/`; the command line catches
`DataError` beside `maml_jax.errors.UserError` and prints it without a
traceback.
"""


class DataError(ValueError):
  """A data file or folder that is missing, damaged or of the wrong form; the message names it."""
