"""Dataset readers: Omniglot (embedded), CIFAR-100, Tiny ImageNet, image folders,
and the meta-dataset that combines them.  Every reader returns `ClassImages`.

Installed as `maml_jax.data` (and, in a source checkout, imported under that
name too: see `maml_jax/__init__.py`).  The bottom of the layering: nothing
here imports from the rest of `maml_jax`; `files` (atomic writes, the cache
folder) and `progress` (bars or log lines) serve the whole project from here.
"""
