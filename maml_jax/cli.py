"""The `run.py` / `maml-jax` command line: parse, dispatch, print."""
import argparse

from maml_jax.commands import modules


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="run.py", description="Few-shot image classification by "
                                   "second-order MAML in JAX. `run.py COMMAND --help` explains each command.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for m in modules():
    m.add_parser(sub)
  args = parser.parse_args(argv)
  return args.func(args)
