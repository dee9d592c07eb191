"""Dataset readers and builders for maml-jax."""
