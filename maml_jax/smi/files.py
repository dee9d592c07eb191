"""Compatibility name for `maml_jax.io` (atomic writes moved there); new code imports `maml_jax.io`."""
from maml_jax.io import (atomic_dir, atomic_path, remove_stale, save_figure, sha256_file, write_bytes,  # noqa: F401
                         write_json, write_npz, write_text)
