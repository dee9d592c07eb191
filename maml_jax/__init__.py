"""maml-jax: few-shot image classification by second-order MAML in JAX.

The dataset readers are the subpackage `maml_jax.data`.  Installed, setup.cfg
puts them there; in a source checkout they are the top-level `data/` folder
beside this package, registered under the same name below, so that one import
path (`maml_jax.data.omniglot`) works in both and nothing is importable under
the generic name `data`.
"""
import importlib.util as _util
import os as _os
import sys as _sys


def _register_checkout_data() -> None:
  here = _os.path.dirname(_os.path.abspath(__file__))
  if "maml_jax.data" in _sys.modules or _os.path.isdir(_os.path.join(here, "data")):
    return   # installed: maml_jax/data/ is a normal subpackage
  folder = _os.path.join(_os.path.dirname(here), "data")
  spec = _util.spec_from_file_location("maml_jax.data", _os.path.join(folder, "__init__.py"),
                                       submodule_search_locations=[folder])
  if spec is None:
    return
  module = _util.module_from_spec(spec)
  _sys.modules["maml_jax.data"] = module
  spec.loader.exec_module(module)


_register_checkout_data()
