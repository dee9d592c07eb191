"""Baselines that learn from the support set alone (no meta-learning).

* `base_learning`: the paper's "Base Learning" - conventional training on the
  support images: transfer learning (a fully connected head from random
  initialisation on frozen pretrained features) and training the whole
  network from random initialisation.
* `simple`: stronger simple baselines on frozen features - nearest class mean
  with cosine similarity (prototypes) and an L2-regularised logistic-regression
  linear probe.
"""
