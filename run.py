#!/usr/bin/env python3
"""maml-jax command line.  `python run.py --help` lists the commands; the
default job is `python run.py meta-train` (Omniglot 5-way 1-shot)."""
import sys

from maml_jax.cli import main

if __name__ == "__main__":
  sys.exit(main())
