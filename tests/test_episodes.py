"""The N-way K-shot sampler (`maml_jax.episodes`): shapes, labels, disjoint
support and query, distinct classes, determinism, host/device agreement and
classes of unequal sizes.  Image sets here are SYNTHETIC."""
import jax
import numpy as np
import pytest

from maml_jax.data.class_images import ClassImages
from maml_jax.episodes import EpisodeSampler

SIZES = (5, 9, 6, 12, 7, 5, 8)          # unequal class sizes
TASKS, WAYS, SHOTS, QUERIES = 3, 4, 2, 3


def row_coded_images(sizes=SIZES, hw=4):
  """SYNTHETIC images whose pixels spell their row: row r is filled with
  (r % 256, r // 256), so every returned image names the row it came from."""
  n = sum(sizes)
  rows = np.arange(n)
  img = np.zeros((n, hw, hw, 2), np.uint8)
  img[..., 0] = (rows % 256)[:, None, None]
  img[..., 1] = (rows // 256)[:, None, None]
  per_class = np.split(img, np.cumsum(sizes)[:-1])
  return ClassImages.from_per_class(per_class, [f"synthetic-{c}" for c in range(len(sizes))], synthetic=True)


def rows_of(x):
  """Rows encoded in float images [..., H, W, 2] in [0, 1]."""
  v = np.rint(np.asarray(x)[..., 0, 0, :] * 255).astype(np.int64)
  return v[..., 0] + 256 * v[..., 1]


def make_sampler(data=None, seed=0, on_device=True, **kw):
  shape = dict(tasks=TASKS, ways=WAYS, shots=SHOTS, queries=QUERIES) | kw
  return EpisodeSampler(data or row_coded_images(), seed=seed, on_device=on_device, **shape)


def test_shapes_dtypes_and_labels():
  ep = make_sampler()(0)
  assert ep.support_x.shape == (TASKS, WAYS * SHOTS, 4, 4, 2) and ep.support_x.dtype == np.float32
  assert ep.query_x.shape == (TASKS, WAYS * QUERIES, 4, 4, 2) and ep.query_x.dtype == np.float32
  assert ep.support_y.shape == (TASKS, WAYS * SHOTS) and ep.query_y.shape == (TASKS, WAYS * QUERIES)
  assert 0.0 <= float(ep.support_x.min()) and float(ep.support_x.max()) <= 1.0
  # Class-major labels 0..ways-1: the first `shots` rows are class 0, and so on.
  np.testing.assert_array_equal(ep.support_y, np.tile(np.repeat(np.arange(WAYS), SHOTS), (TASKS, 1)))
  np.testing.assert_array_equal(ep.query_y, np.tile(np.repeat(np.arange(WAYS), QUERIES), (TASKS, 1)))


def test_rows_are_distinct_in_class_and_match_the_images():
  data = row_coded_images()
  sampler = make_sampler(data)
  starts, counts = data.class_start, data.class_count
  for i in range(20):
    idx, ep = sampler.indices(i), sampler(i)
    s, q, classes = (np.asarray(a) for a in idx)
    np.testing.assert_array_equal(rows_of(ep.support_x), s)   # the images are those rows
    np.testing.assert_array_equal(rows_of(ep.query_x), q)
    for t in range(TASKS):
      assert len(set(classes[t])) == WAYS                     # distinct classes per task
      assert not set(s[t]) & set(q[t])                        # support and query disjoint
      assert len(set(s[t])) == WAYS * SHOTS and len(set(q[t])) == WAYS * QUERIES
      # Label k's rows all lie inside class classes[t, k], whatever its size.
      for rows, y in ((s[t], ep.support_y[t]), (q[t], ep.query_y[t])):
        c = classes[t][np.asarray(y)]
        assert np.all(rows >= starts[c]) and np.all(rows < starts[c] + counts[c])


def test_every_row_of_a_small_class_can_be_drawn():
  """The rows beyond a small class's size are masked out, its own rows are not."""
  data = row_coded_images()
  sampler = make_sampler(data)
  seen = set()
  for i in range(40):
    idx = sampler.indices(i)
    seen |= set(np.asarray(idx.support).ravel()) | set(np.asarray(idx.query).ravel())
  assert seen == set(range(len(data.images)))


def test_same_index_same_episode_and_different_otherwise():
  a = make_sampler(seed=3)
  again = make_sampler(seed=3)              # e.g. a resumed run
  for x, y in zip(a(7), again(7)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a(7).support_x, a(8).support_x)
  assert not np.array_equal(a(7).support_x, make_sampler(seed=4)(7).support_x)


def test_host_and_device_gathers_give_identical_episodes():
  data = row_coded_images()
  on, off = make_sampler(data, on_device=True), make_sampler(data, on_device=False)
  for i in (0, 5):
    for x, y in zip(on(i), off(i)):
      assert x.dtype == y.dtype
      np.testing.assert_array_equal(x, y)


def test_a_class_too_small_is_named_with_its_counts():
  data = row_coded_images(sizes=(6, 6, 4, 6, 6))
  with pytest.raises(ValueError, match=r"class 'synthetic-2' has 4 images; 2\+3 \(shots\+queries\)"):
    make_sampler(data)


def test_too_few_classes_for_the_ways():
  with pytest.raises(ValueError, match="5-way episodes need 5 classes; the set has 4"):
    make_sampler(row_coded_images(sizes=(6,) * 4), ways=5)


def test_ordered_classes_keep_their_order_in_the_labels():
  """Ordered classes (bone-age bins): label k is the k-th drawn class by index,
  so the order of the classes carries over to the labels; unordered: shuffled."""
  import dataclasses
  from maml_jax.data_sources import synthetic_classes
  data = synthetic_classes(10, 6, 8, 1, 0)
  for ordered in (True, False):
    s = EpisodeSampler(dataclasses.replace(data, ordered=ordered), tasks=64, ways=5, shots=1, queries=1, seed=0,
                       on_device=False)
    classes = np.asarray(s.indices(0).classes)                       # [tasks, ways], label k = column k
    increasing = np.all(np.diff(classes, axis=1) > 0, axis=1)
    assert increasing.all() if ordered else increasing.mean() < 0.1
