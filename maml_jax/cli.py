"""The `run.py` / `maml-jax` command line: parse, dispatch, print."""
import argparse

from maml_jax.commands import modules


def _enable_compilation_cache() -> None:
  """Keeps compiled steps on disk, so a second run of the same configuration
  starts in seconds (MAML_JAX_COMPILATION_CACHE="" turns it off)."""
  import os
  import jax
  path = os.environ.get("MAML_JAX_COMPILATION_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "maml_jax", "jax_compilation_cache"))
  if path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv=None) -> int:
  _enable_compilation_cache()
  parser = argparse.ArgumentParser(prog="run.py", description="Few-shot image classification by "
                                   "second-order MAML in JAX. `run.py COMMAND --help` explains each command.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for m in modules():
    m.add_parser(sub)
  args = parser.parse_args(argv)
  return args.func(args)
