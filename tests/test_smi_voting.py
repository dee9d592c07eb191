"""ROI combination rules on hand-made vote tables."""
import numpy as np
import pytest

from maml_jax.smi import voting


def onehot_probs(votes, c=5, confidence=None):
  """[R, C] probabilities with ROI r voting votes[r] (confidence per ROI)."""
  conf = np.full(len(votes), 0.6) if confidence is None else np.asarray(confidence)
  p = np.tile(((1 - conf) / (c - 1))[:, None], (1, c))
  p[np.arange(len(votes)), votes] = conf
  return p


def test_majority_plain():
  p = onehot_probs([2, 2, 2, 1, 0, 4])
  assert voting.majority(p) == 2


def test_majority_tie_broken_by_summed_probabilities():
  # Classes 1 and 3 get 3 votes each; class 3's voters are more confident.
  p = onehot_probs([1, 1, 1, 3, 3, 3], confidence=[0.5, 0.5, 0.5, 0.9, 0.9, 0.9])
  assert voting.majority(p) == 3
  p = onehot_probs([1, 1, 1, 3, 3, 3], confidence=[0.9, 0.9, 0.9, 0.5, 0.5, 0.5])
  assert voting.majority(p) == 1


def test_tie_break_ignores_classes_outside_the_tie():
  # 2-2-1-1 votes: classes 0 and 4 tie at 2; class 2 has the most summed
  # probability overall but is not in the tie.
  p = np.array([[.40, 0, .35, 0, .25], [.40, 0, .35, 0, .25],
                [0, 0, .45, 0, .55], [0, 0, .45, 0, .55],
                [0, .6, .4, 0, 0], [0, 0, .4, .6, 0]])
  assert p.argmax(1).tolist() == [0, 0, 4, 4, 1, 3]
  assert voting.majority(p) == 4          # 0.8 + 1.1 for class 4 vs 0.8 for class 0
  assert voting.average(p) == 2


def test_average_can_disagree_with_majority():
  # Four weak votes for 0, two strong ones for 3.
  p = np.array([[.3, .175, .175, .175, .175]] * 4 + [[0, 0, 0, 1.0, 0]] * 2)
  assert voting.majority(p) == 0
  assert voting.average(p) == 3


def test_weighted_vote():
  p = onehot_probs([0, 0, 0, 0, 2, 2])
  assert voting.weighted(p, np.ones(6)) == 0
  assert voting.weighted(p, [0.05, 0.05, 0.05, 0.05, 0.4, 0.4]) == 2
  with pytest.raises(ValueError):
    voting.weighted(p, np.zeros(6))


def test_batched_shapes():
  p = np.stack([onehot_probs([1] * 6), onehot_probs([4] * 6)])[None]   # [1, 2, R, C]
  assert voting.majority(p).tolist() == [[1, 4]]
  assert voting.combine("weighted", p, np.ones(6)).tolist() == [[1, 4]]


def test_support_weights():
  w = voting.support_weights(np.array([0.2, 0.6, 1.0, 0.1]), 5)
  np.testing.assert_allclose(w, np.array([0, 0.4, 0.8, 0]) / 1.2)
  np.testing.assert_allclose(voting.support_weights(np.array([0.1, 0.2]), 5), [0.5, 0.5])
