"""Sub-commands of run.py, one module each: `add_parser(subparsers)` and `main(args) -> int`."""
import importlib

COMMANDS = ("meta_train", "evaluate", "adapt", "predict", "prepare_smi", "make_smi_demo", "prepare_data",
            "check_backbone", "experiment", "bench", "classify")


def modules():
  return [importlib.import_module(f"maml_jax.commands.{name}") for name in COMMANDS]
