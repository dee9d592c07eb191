"""The `run.py` / `maml-jax` command line: parse, dispatch, print."""
import argparse
import signal
import sys
import threading

from maml_jax.commands import modules
from maml_jax.gpu_defaults import apply_gpu_defaults


def _enable_compilation_cache() -> None:
  """Keeps compiled steps on disk, so a second run of the same configuration
  starts in seconds (MAML_JAX_COMPILATION_CACHE="" turns it off)."""
  import os
  import jax
  from maml_jax.io import cache_root
  path = os.environ.get("MAML_JAX_COMPILATION_CACHE", os.path.join(cache_root(), "jax_compilation_cache"))
  if path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def build_parser() -> argparse.ArgumentParser:
  """The whole command line: one sub-parser per module of `maml_jax.commands`."""
  parser = argparse.ArgumentParser(prog="run.py", description="Few-shot image classification by "
                                   "second-order MAML in JAX. `run.py COMMAND --help` explains each command.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for m in modules():
    m.add_parser(sub)
  return parser


def main(argv=None) -> int:
  """Parses `argv`, runs the command; a user error prints `error: ...` and returns 2, Ctrl-C prints
  `interrupted` and returns 130 (no traceback either way).  `meta-train` catches Ctrl-C itself and
  stops at a step boundary with a checkpoint."""
  from maml_jax.errors import USER_ERRORS, report
  args = build_parser().parse_args(argv)
  apply_gpu_defaults()   # before JAX's backend starts: XLA reads its flags once
  _enable_compilation_cache()
  try:
    status = args.func(args)
  except USER_ERRORS as e:
    return report(e)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    status = 130
  if status == 130 and threading.current_thread() is threading.main_thread():
    # Exiting after Ctrl-C: another one during JAX's clean-up ends the process without a traceback.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
  return status
