"""A meta-training run that meets a NaN mid-way, to see how it stops.

    python -m maml_jax.tools.forced_nan WORKDIR

The `tiny` preset (SYNTHETIC data) for 8 steps, validation and a checkpoint
every 2 steps, a log line every 4, with one NaN pixel in the training
episodes of step 5.  The run must stop with `error: ... at step 5 ...`
(exit 2), keep the checkpoints of steps 2 and 4, and `run.py evaluate
--workdir WORKDIR` must then work on the kept best checkpoint.
"""
import sys

import numpy as np

from maml_jax import train
from maml_jax.config import get_preset
from maml_jax.episodes import EpisodeSampler
from maml_jax.errors import USER_ERRORS, report

CFG = get_preset("tiny").replace(steps=8, val_every=2, checkpoint_every=2, log_every=4)
POISONED_STEP = 5


class Poisoned(EpisodeSampler):
  """The training sampler (seed = the run's seed) with one NaN query pixel at POISONED_STEP."""

  def __call__(self, i):
    b = super().__call__(i)
    if self.seed == CFG.seed and i == POISONED_STEP - 1:
      b = b._replace(query_x=b.query_x.at[0, 0, 0, 0, 0].set(np.nan))
    return b


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print(__doc__, file=sys.stderr)
    return 2
  train.EpisodeSampler = Poisoned
  try:
    train.train_and_evaluate(CFG, argv[0], progress=False)
  except USER_ERRORS as e:
    return report(e)
  finally:
    train.EpisodeSampler = EpisodeSampler
  return 0


if __name__ == "__main__":
  sys.exit(main())
