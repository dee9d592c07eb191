"""Omniglot's Lake split (`--split lake`) and within-alphabet episodes
(`--within-alphabet`) on tiny SYNTHETIC alphabets named like Omniglot's classes."""
import numpy as np
import pytest

from maml_jax import data_sources
from maml_jax.config import ConfigError, get_preset
from maml_jax.data import omniglot
from maml_jax.data.class_images import ClassImages
from maml_jax.episodes import EpisodeSampler

# (part, alphabet, characters): background alphabets of several sizes, two evaluation ones.
ALPHABETS = [("images_background", f"Bg{i}", n) for i, n in enumerate([6, 3, 5, 4, 7, 6, 2])] + \
            [("images_evaluation", "EvA", 5), ("images_evaluation", "EvB", 4)]


def fake_omniglot(per_class=4, size=6) -> ClassImages:
  """SYNTHETIC: random images under Omniglot's class names '<part>/<Alphabet>/characterNN'."""
  rng = np.random.default_rng(0)
  names = sorted(f"{p}/{a}/character{c + 1:02d}" for p, a, n in ALPHABETS for c in range(n))
  names.sort(key=lambda k: k.split("/", 1)[1])   # the reader's order (by alphabet, then character)
  per = [rng.integers(0, 256, (per_class, size, size, 1), dtype=np.uint8) for _ in names]
  return ClassImages.from_per_class(per, names, synthetic=True)


def test_lake_split_trains_and_validates_on_background_and_tests_on_evaluation():
  data = fake_omniglot()
  s = omniglot.lake_split(data, seed=3, val_alphabets=2)
  part = lambda n: n.split("/", 1)[0]
  assert {part(n) for n in s["train"].class_names} == {"images_background"}
  assert {part(n) for n in s["val"].class_names} == {"images_background"}
  assert sorted(s["test"].class_names) == sorted(n for n in data.class_names if part(n) == "images_evaluation")
  train_alpha = {omniglot.alphabet(n.split("@")[0]) for n in s["train"].class_names}
  val_alpha = {omniglot.alphabet(n) for n in s["val"].class_names}
  assert len(val_alpha) == 2 and not train_alpha & val_alpha   # whole alphabets held out
  background = [n for n in data.class_names if part(n) == "images_background"]
  assert s["train"].num_classes == 4 * (len(background) - s["val"].num_classes)   # with rotations
  assert {n.split("@")[0] for n in s["train"].class_names} | set(s["val"].class_names) == set(background)
  # Seeded: the same seed holds out the same alphabets, another seed may not.
  assert omniglot.lake_split(data, seed=3, val_alphabets=2)["val"].class_names == s["val"].class_names


def test_lake_split_rejects_data_without_an_evaluation_part():
  data = fake_omniglot()
  bg = data.subset([i for i, n in enumerate(data.class_names) if n.startswith("images_background")])
  with pytest.raises(omniglot.OmniglotError, match="images_evaluation"):
    omniglot.lake_split(bg)


def test_within_alphabet_episodes_draw_every_class_from_one_alphabet():
  data = omniglot.with_alphabets(omniglot.rotations(fake_omniglot()))
  ways = 5
  sampler = EpisodeSampler(data, tasks=8, ways=ways, shots=1, queries=1, seed=0, on_device=False)
  sizes = np.bincount(data.class_groups)
  seen = set()
  for i in range(6):
    classes = np.asarray(sampler.indices(i).classes)
    for row in classes:
      groups = data.class_groups[row]
      assert len(set(row.tolist())) == ways and len(set(groups.tolist())) == 1
      assert sizes[groups[0]] >= ways   # alphabets too small are never drawn
      seen.add(int(groups[0]))
  assert len(seen) > 3   # many alphabets (and rotations) take part
  np.testing.assert_array_equal(sampler.indices(2).classes, sampler.indices(2).classes)
  # Without groups, episodes mix alphabets.
  plain = EpisodeSampler(omniglot.rotations(fake_omniglot()), tasks=8, ways=ways, shots=1, queries=1, seed=0,
                         on_device=False)
  mixed = [len(set(data.class_groups[row].tolist())) for row in np.asarray(plain.indices(0).classes)]
  assert max(mixed) > 1


def test_within_alphabet_needs_an_alphabet_of_ways_characters():
  data = omniglot.with_alphabets(fake_omniglot())
  with pytest.raises(ValueError, match="group of 8 classes"):
    EpisodeSampler(data, tasks=2, ways=8, shots=1, queries=1, seed=0, on_device=False)


def test_load_splits_dispatches_on_split_and_within_alphabet(monkeypatch):
  monkeypatch.setattr(omniglot, "load_omniglot", lambda root, size: fake_omniglot())
  cfg = get_preset("omniglot-20w1s-lake").replace(ways=3)
  splits = data_sources.load_splits(cfg)
  assert all(n.startswith("images_evaluation") for n in splits["test"].class_names)
  assert all(s.class_groups is not None for s in splits.values())
  assert data_sources.load_splits(cfg.replace(within_alphabet=False))["test"].class_groups is None


def test_lake_preset_and_split_validation():
  cfg = get_preset("omniglot-20w1s-lake").validate()
  assert (cfg.ways, cfg.shots, cfg.split, cfg.within_alphabet) == (20, 1, "lake", True)
  for name in ("omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s"):
    get_preset(name).validate()
  with pytest.raises(ConfigError, match="split="):
    cfg.replace(split="other").validate()
  with pytest.raises(ConfigError, match="omniglot only"):
    get_preset("tiny").replace(within_alphabet=True).validate()
