"""Compatibility name for `maml_jax.io` (atomic writes moved there); new code imports `maml_jax.io`."""
from maml_jax.io import (atomic_dir, atomic_path, save_figure, sha256_file, write_bytes, write_json,  # noqa: F401
                         write_npz, write_text)
