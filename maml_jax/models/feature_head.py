"""The paper's fully connected head on frozen feature vectors."""
import flax.linen as nn

from maml_jax.models.layers import MLPHead

HEAD_HIDDEN = (256, 256, 256)   # the paper's 3 fully connected layers of 256 units


class FeatureHead(nn.Module):
  """The paper's fully connected head on frozen feature vectors.

  `apply({"params": p}, x, stat_mask=None)` with x float32 [B, D] -> logits
  [B, ways]; `stat_mask` is accepted for the project's model interface (there
  is no batch norm).  Parameters live under "head" (`head/fc_0` .. `head/out`),
  like the networks' heads, so the engine's masks ('head', 'out') apply.
  """
  ways: int
  hidden: tuple[int, ...] = HEAD_HIDDEN

  @nn.compact
  def __call__(self, x, stat_mask=None):
    del stat_mask
    return MLPHead(self.hidden, self.ways, name="head")(x)
