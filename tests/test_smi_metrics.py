"""Clinical scores against hand-computed values."""
import math

import numpy as np
import pytest

from maml_jax.smi import clinical_metrics as cm

Y = np.array([0, 1, 2, 3, 4, 0])
P = np.array([0, 2, 2, 1, 4, 4])


def test_confusion_mae_within_one():
  m = cm.confusion(Y, P, 5)
  assert m.sum() == 6 and m[0, 0] == 1 and m[0, 4] == 1 and m[1, 2] == 1 and m[3, 1] == 1
  assert cm.accuracy(Y, P) == pytest.approx(3 / 6)
  # |errors| = 0, 1, 0, 2, 0, 4
  assert cm.mean_absolute_error(Y, P) == pytest.approx(7 / 6)
  assert cm.within_one(Y, P) == pytest.approx(4 / 6)


def test_quadratic_kappa_by_hand():
  # y = [0, 0, 1, 1], p = [0, 1, 1, 1], C = 2: w = [[0, 1], [1, 0]].
  # Observed disagreement: one (0 -> 1) => sum(w*O) = 1.
  # Marginals: true (2, 2), predicted (1, 3); E = outer / 4 => E01 = 1.5, E10 = 0.5.
  # kappa = 1 - 1 / 2 = 0.5.
  assert cm.quadratic_kappa([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx(0.5)
  # 3 classes, w = (i-j)^2/4: y = [0, 1, 2], p = [0, 2, 2]: one disagreement
  # (1 -> 2) of weight 1/4.  Marginals true (1, 1, 1), predicted (1, 0, 2), so
  # E_ij = pred_j / 3 and sum(w*E) = (1/3) * [row 0: 2, row 1: .25 + .5, row 2: 1].
  e = (1 / 3) * (2 + 0.75 + 1)
  assert cm.quadratic_kappa([0, 1, 2], [0, 2, 2], 3) == pytest.approx(1 - 0.25 / e)
  assert cm.quadratic_kappa(Y, Y, 5) == pytest.approx(1.0)
  assert math.isnan(cm.quadratic_kappa([1, 1], [1, 1], 5))


def test_kappa_matches_sklearn_if_installed():
  sk = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  y, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
  p[:120] = y[:120]
  assert cm.quadratic_kappa(y, p, 5) == pytest.approx(sk.cohen_kappa_score(y, p, weights="quadratic"))


def test_mean_ci_uses_the_t_distribution():
  s = cm.mean_ci([0.5, 0.6, 0.7, 0.4, 0.8])
  # std (ddof 1) = 0.158114; t_{0.975, 4} = 2.776445; half-width = t * std / sqrt(5).
  assert s["mean"] == pytest.approx(0.6)
  assert s["ci95"] == pytest.approx(2.776445 * 0.1581139 / math.sqrt(5), rel=1e-5)
  assert math.isnan(cm.mean_ci([0.3])["ci95"])
