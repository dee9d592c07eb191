"""Compatibility name for `maml_jax.learner` (the adapt-and-predict API moved there); new code imports that."""
from maml_jax.learner import (Learner, adapt_fn, learner_from_trained, load_learner, predict_fn,  # noqa: F401
                              to_model_input)
