"""Base-learning and simple baselines: prototypes, linear probe, trainers."""
import jax
import jax.numpy as jnp
import numpy as np

from maml_jax import maml
from maml_jax.baselines import base_learning as bl
from maml_jax.baselines import simple
from maml_jax.config import Config
from maml_jax.models import build_model


def separable(n_per=6, ways=3, dim=5, seed=0):
  """Features whose class c points along axis c (plus small noise), scaled at random."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(ways), n_per).astype(np.int32)
  f = 0.2 * rng.normal(size=(len(y), dim))
  f[np.arange(len(y)), y] += 1.0
  f *= rng.uniform(0.5, 3.0, size=(len(y), 1))   # cosine methods must not care about scale
  return f.astype(np.float32), y


def test_prototypes_by_hand():
  support = np.array([[1, 0], [3, 0], [0, 2], [0, 1]], np.float32)
  y = np.array([0, 0, 1, 1], np.int32)
  query = np.array([[5, 1], [1, 4], [-1, 0.1], [2, 2.01]], np.float32)
  logits = np.asarray(simple.prototype_logits(support, y, query, ways=2))
  # class means of unit vectors are (1, 0) and (0, 1): logits = 10 * cosine to each axis
  cos = query / np.linalg.norm(query, axis=1, keepdims=True)
  np.testing.assert_allclose(logits, 10 * cos, rtol=1e-5)
  assert logits.argmax(1).tolist() == [0, 1, 1, 1]


def test_prototypes_and_probe_on_separable_features():
  f, y = separable(seed=0)
  q, qy = separable(seed=1)
  assert (np.asarray(simple.prototype_logits(f, y, q, ways=3)).argmax(1) == qy).all()
  params, values = simple.fit_linear_probe(f, y, ways=3)
  values = np.asarray(values)
  assert values[0] == np.float32(np.log(3))                      # zero weights: uniform
  assert values[-1] < 0.5 * values[0]
  assert np.all(np.diff(values) <= 1e-6)                           # L-BFGS with line search never goes up
  assert (np.asarray(simple.linear_probe_logits(params, q)).argmax(1) == qy).all()


def test_linear_probe_reaches_the_regularised_optimum():
  f, y = separable(n_per=4, ways=3, dim=4, seed=2)
  params, _ = simple.fit_linear_probe(f, y, ways=3, l2=0.1)
  # at the optimum the gradient of the strictly convex objective vanishes
  g = jax.grad(simple._probe_loss)(params, simple.l2_normalise(f), jnp.asarray(y), 0.1)
  assert max(float(jnp.abs(v).max()) for v in jax.tree.leaves(g)) < 1e-3
  # and a stronger penalty gives smaller weights
  strong, _ = simple.fit_linear_probe(f, y, ways=3, l2=1.0)
  assert float(jnp.linalg.norm(strong["w"])) < float(jnp.linalg.norm(params["w"]))


def test_head_trainer_reduces_support_loss():
  f, y = separable(seed=3)
  head, fit = bl.fit_head(f, y, ways=3, key=jax.random.key(0), steps=30)
  losses = np.asarray(fit.losses)
  assert losses.shape == (31,)
  assert losses[-1] < 0.2 * losses[0]
  probs = np.asarray(bl.head_probs(head, fit.params, f))
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  assert (probs.argmax(1) == y).all()


def test_network_trainer_reduces_support_loss_and_queries_are_independent():
  rng = np.random.default_rng(0)
  model = build_model("tiny", 3)
  x = rng.random((9, 12, 12, 1)).astype(np.float32)
  y = np.repeat(np.arange(3), 3).astype(np.int32)
  fit = bl.fit_network(model, x, y, key=jax.random.key(1), steps=25)
  losses = np.asarray(fit.losses)
  assert losses[-1] < 0.5 * losses[0]
  q = rng.random((4, 12, 12, 1)).astype(np.float32)
  together = np.asarray(bl.network_probs(model, fit.params, x, q))
  alone = np.asarray(bl.network_probs(model, fit.params, x, q[1:2]))
  # batch norm uses the support set's statistics: a query's output ignores the other queries
  np.testing.assert_allclose(together[1:2], alone, rtol=1e-4, atol=1e-6)


def test_zero_steps_is_the_initialisation():
  f, y = separable(seed=4)
  head = bl.FeatureHead(3)
  p0 = bl.init_params(head, jax.random.key(0), jnp.asarray(f[:1]))
  fit = bl.train(head, p0, jnp.asarray(f), jnp.asarray(y), steps=0)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(fit.params)))


def test_feature_head_masks_match_the_engine():
  head = bl.FeatureHead(3)
  params = head.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
  names = maml.path_names(params)
  everything = maml.inner_mask(params, Config(inner_mask="head"))
  anil = maml.inner_mask(params, Config(inner_mask="out"))
  assert all(jax.tree.leaves(everything))
  selected = sorted(n for n, m in zip(jax.tree.leaves(names), jax.tree.leaves(anil)) if m)
  assert selected == ["head/out/bias", "head/out/kernel"]
