"""Supervised pretraining on a synthetic (generated) class-indexed image set."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from maml_jax.data.class_images import ClassImages
from maml_jax.pretrained import supervised


class _Linear(nn.Module):
  """A linear classifier on the pixels: enough for the quadrant task, quick to compile."""
  ways: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.ways)(x.reshape(x.shape[0], -1))


def _synthetic_quadrants(per_class=16, size=16, seed=0):
  """SYNTHETIC: 4 classes, class c = a bright quadrant c on noise."""
  rng = np.random.default_rng(seed)
  h = size // 2
  per = []
  for c in range(4):
    x = rng.integers(0, 90, (per_class, size, size, 1))
    r, col = divmod(c, 2)
    x[:, r * h:(r + 1) * h, col * h:(col + 1) * h] += 140
    per.append(x.astype(np.uint8))
  return ClassImages.from_per_class(per, [f"quadrant{c}" for c in range(4)], synthetic=True)


def test_class_labels_follow_the_flat_layout():
  data = ClassImages.from_per_class([np.zeros((2, 4, 4, 1), np.uint8), np.zeros((3, 4, 4, 1), np.uint8)])
  np.testing.assert_array_equal(supervised.class_labels(data), [0, 0, 1, 1, 1])


def test_pretraining_learns_a_learnable_synthetic_task():
  data = _synthetic_quadrants()
  model = _Linear(4)
  params, history = supervised.pretrain(model, data, epochs=12, batch_size=16, learning_rate=3e-3,
                                        progress=False)
  assert len(history) == 12
  assert history[-1].loss < 0.5 * history[0].loss
  logits = model.apply({"params": params}, jnp.asarray(data.images, jnp.float32) / 255.0)
  acc = float((logits.argmax(-1) == supervised.class_labels(data)).mean())
  assert acc > 0.9   # chance is 0.25


def test_head_size_must_match_the_classes():
  with pytest.raises(ValueError, match="needs 4"):
    supervised.pretrain(_Linear(5), _synthetic_quadrants(), epochs=1, batch_size=8)


def test_transfer_backbone_keeps_the_target_head():
  src = {"block_0": {"kernel": jnp.ones((3, 3, 1, 8))}, "head": {"out": {"kernel": jnp.ones((8, 64))}}}
  dst = {"block_0": {"kernel": jnp.zeros((3, 3, 1, 8))}, "head": {"out": {"kernel": jnp.zeros((8, 5))}}}
  out = supervised.transfer_backbone(src, dst)
  assert float(out["block_0"]["kernel"].sum()) == 72 and float(out["head"]["out"]["kernel"].sum()) == 0
  bad = {"block_0": {"kernel": jnp.zeros((3, 3, 3, 8))}, "head": dst["head"]}
  with pytest.raises(ValueError, match="block_0/kernel"):
    supervised.transfer_backbone(src, bad)
