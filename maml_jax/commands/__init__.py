"""Sub-commands of run.py, one module each: `add_parser(subparsers)` and `main(args) -> int`."""
import importlib

COMMANDS = ("meta_train", "evaluate", "bench", "prepare_data")


def modules():
  return [importlib.import_module(f"maml_jax.commands.{name}") for name in COMMANDS]
