"""One evaluator: training/`evaluate` and the experiment grid's meta-learned
columns give identical accuracies on the same episodes."""
import jax
import numpy as np

from maml_jax import data_sources, evaluate
from maml_jax.config import get_preset
from maml_jax.experiment import grid, methods
from maml_jax.experiment.backbones import NetSpec
from maml_jax.experiment.sources import metadataset_source
from maml_jax.learner import Learner
from maml_jax.maml import init_meta_params
from maml_jax.models import model_for


def test_grid_meta_column_and_evaluator_agree_on_the_same_episodes():
  # The grid draws one episode per (shots, repeat) and classifies each query on
  # its own (support-set batch-norm statistics); with query_bn="support" and one
  # task per batch the evaluator sees exactly those episodes.
  cfg = get_preset("tiny").replace(query_bn="support", tasks=1, eval_queries=3)
  model = model_for(cfg)
  meta_params = init_meta_params(model, cfg, jax.random.key(1), (cfg.image_size, cfg.image_size, cfg.channels))
  test = data_sources.load_splits(cfg)["test"]
  episodes, seed, shots = 5, 7, 2

  accs = evaluate.evaluate_params(model, cfg, meta_params, test, episodes=episodes, seed=seed, shots=shots,
                                  progress=False)

  source = metadataset_source(test, ways=cfg.ways, queries=cfg.eval_queries, seed=seed, description="SYNTHETIC")
  ctx = methods.Context(source, NetSpec(cfg.model, cfg.width, cfg.image_size, cfg.channels))
  ctx.learners[("meta", "scratch")] = Learner(cfg, model, meta_params, cfg.eval_inner_steps)
  predict = methods.predictor("meta", "scratch", ctx)
  in_grid = []
  for r in range(episodes):
    draw = source.draw(shots, r)
    probs = predict(grid.crop_task(source, draw), grid.cell_key_fn(seed)(shots, r))
    in_grid.append(grid.score(probs, draw.query_y, source.rois)["accuracy"])

  np.testing.assert_allclose(in_grid, accs, rtol=0, atol=1e-6)
  assert len(set(np.round(accs, 6))) > 1   # the episodes differ, so agreement is not a constant


def test_summary_is_the_t_interval():
  s = evaluate.summary([0.5, 0.6, 0.7, 0.4, 0.8])
  assert s["episodes"] == 5 and abs(s["accuracy"] - 0.6) < 1e-12
  assert abs(s["ci95"] - 2.776445 * 0.1581139 / np.sqrt(5)) < 1e-6   # t(0.975, 4), not 1.96
