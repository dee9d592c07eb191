"""The algorithm seam: the registry, each algorithm's meta-gradient by hand, the
inner rules, and Reptile and prototypical networks end to end."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml_jax import algorithms, cli, inner_rules
from maml_jax.algorithms import protonet, reptile
from maml_jax.config import ConfigError, get_preset
from maml_jax.episodes import Episodes
from maml_jax.models.layers import MLPHead


class Net(nn.Module):
  """A tiny network: `hidden` ReLU layers then the output layer `head/out`, on flattened images."""
  ways: int
  hidden: tuple = ()

  @nn.compact
  def __call__(self, x, stat_mask=None):
    return MLPHead(self.hidden, self.ways, name="head")(x)


def _batch(tasks=2, ways=3, shots=2, queries=2, size=4, seed=0):
  k = jax.random.split(jax.random.key(seed), 2)
  sx = jax.random.uniform(k[0], (tasks, ways * shots, size, size, 1), jnp.float64)
  qx = jax.random.uniform(k[1], (tasks, ways * queries, size, size, 1), jnp.float64)
  sy = jnp.tile(jnp.repeat(jnp.arange(ways), shots), (tasks, 1))
  qy = jnp.tile(jnp.repeat(jnp.arange(ways), queries), (tasks, 1))
  return Episodes(sx, sy, qx, qy)


def _params(model, x):
  return jax.tree.map(lambda w: w.astype(jnp.float64), model.init(jax.random.key(1), x)["params"])


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_registry_and_settings_an_algorithm_does_not_use():
  assert list(algorithms.ALGORITHMS) == ["maml", "anil", "reptile", "protonet"]
  anil = algorithms.configure(get_preset("default"), {"algorithm": "anil"}).validate()
  assert anil.inner_mask == "head/out" and anil.learn_inner_lr   # the preset's other settings stay
  proto = algorithms.configure(get_preset("default"), {"algorithm": "protonet"}).validate()
  assert (proto.inner_steps, proto.eval_inner_steps, proto.learn_inner_lr) == (0, 0, False)
  with pytest.raises(ConfigError, match="--algorithm protonet does not apply --first-order"):
    algorithms.configure(get_preset("default"), {"algorithm": "protonet", "first_order": True})
  with pytest.raises(ConfigError, match="it sets inner_mask='head/out' itself"):
    algorithms.configure(get_preset("default"), {"algorithm": "anil", "inner_mask": "head"})
  with pytest.raises(ConfigError, match="does not use first_order"):
    get_preset("tiny").replace(algorithm="reptile", first_order=True).validate()
  with pytest.raises(ConfigError, match="unknown algorithm 'foo'; choose from maml, anil, reptile, protonet"):
    get_preset("tiny").replace(algorithm="foo").validate()


@pytest.mark.parametrize("argv, says", [
    (["--algorithm", "foo"], "unknown algorithm 'foo'; choose from maml, anil, reptile, protonet"),
    (["--algorithm", "protonet", "--first-order"], "--algorithm protonet does not apply --first-order"),
    (["--algorithm", "reptile", "--learn-inner-lr", "--inner-steps", "0"], "does not apply --learn-inner-lr"),
    (["--algorithm", "reptile", "--inner-steps", "0"], "algorithm=reptile needs inner_steps >= 1"),
])
def test_bad_algorithm_options_are_one_error_line_and_write_nothing(argv, says, tmp_path, capsys):
  w = tmp_path / "w"
  assert cli.main(["meta-train", "--preset", "tiny", "--workdir", str(w), "--no-progress"] + argv) == 2
  err = capsys.readouterr().err
  assert err.splitlines()[-1].startswith("error: ") and says in err and "Traceback" not in err
  assert not w.exists()


def test_inner_rules_are_init_update_pairs():
  params = {"a": jnp.ones((2, 3)), "b": jnp.ones((3,))}
  grads = {"a": jnp.full((2, 3), 2.0), "b": jnp.arange(3.0)}
  sgd = inner_rules.sgd(0.5)
  assert sgd.init(params) == {}
  np.testing.assert_allclose(jax.jit(sgd.update)(grads, {}, 0)["b"], [0.0, -0.5, -1.0])
  lslr = inner_rules.lslr(0.5, 2)
  rates = jax.tree.map(lambda r: r * jnp.array([1.0, 0.25]), lslr.init(params))
  for step, lr in [(0, 0.5), (1, 0.125), (5, 0.125)]:     # beyond the trained steps: the last rate
    np.testing.assert_allclose(jax.jit(lslr.update)(grads, rates, step)["a"], -lr * 2.0)
  msgd = inner_rules.meta_sgd(0.5)
  rates = msgd.init(params)
  assert rates["a"].shape == (1, 2, 3)
  rates = {"a": rates["a"].at[0, 1, 2].set(3.0), "b": rates["b"]}
  u = jax.jit(msgd.update)(grads, rates, 7)["a"]
  assert u[1, 2] == -6.0 and u[0, 0] == -1.0


def test_reptile_pseudo_gradient_is_the_hand_computed_one(x64):
  ways, steps, lr = 3, 2, 0.3
  cfg = algorithms.configure(get_preset("tiny"), {"algorithm": "reptile", "ways": ways, "inner_steps": steps,
                                                  "inner_lr": lr, "task_map": "vmap"}).validate()
  model, batch = Net(ways), _batch(ways=ways)
  params = _params(model, batch.support_x[0])
  grads, metrics = jax.jit(lambda mp, b: reptile.ALGORITHM.meta_grads(mp, b, model=model, cfg=cfg, meta_step=0))(
      {"model": params, "lr": {}}, batch)
  w0 = np.asarray(params["head"]["out"]["kernel"])
  b0 = np.asarray(params["head"]["out"]["bias"])
  expect_w, expect_b = [], []
  for t in range(2):   # textbook SGD on the softmax regression, support and queries together
    x = np.concatenate([batch.support_x[t], batch.query_x[t]]).reshape(-1, 16)
    y = np.eye(ways)[np.concatenate([batch.support_y[t], batch.query_y[t]])]
    w, b = w0.copy(), b0.copy()
    for _ in range(steps):   # (the inner rate is a float32, as in every inner rule)
      d = (_softmax(x @ w + b) - y) / len(x)
      w, b = w - float(np.float32(lr)) * x.T @ d, b - float(np.float32(lr)) * d.sum(0)
    expect_w.append((w0 - w) / (lr * steps))
    expect_b.append((b0 - b) / (lr * steps))
  np.testing.assert_allclose(grads["model"]["head"]["out"]["kernel"], np.mean(expect_w, 0), rtol=1e-10)
  np.testing.assert_allclose(grads["model"]["head"]["out"]["bias"], np.mean(expect_b, 0), rtol=1e-10)
  assert grads["lr"] == {} and np.isfinite(float(metrics["loss"]))


def test_protonet_logits_are_negative_squared_distances_to_the_prototypes(x64):
  ways = 3
  cfg = algorithms.configure(get_preset("tiny"), {"algorithm": "protonet", "ways": ways}).validate()
  model, batch = Net(ways, hidden=(5,)), _batch(ways=ways)
  params = _params(model, batch.support_x[0])
  fc = params["head"]["fc_0"]
  embed = lambda x: np.maximum(np.asarray(x).reshape(len(x), -1) @ np.asarray(fc["kernel"]) + np.asarray(fc["bias"]), 0)
  hand_losses = []
  for t in range(2):
    es, eq = embed(batch.support_x[t]), embed(batch.query_x[t])
    protos = np.stack([es[np.asarray(batch.support_y[t]) == c].mean(0) for c in range(ways)])
    hand = -((eq[:, None, :] - protos[None]) ** 2).sum(-1)
    adapted, logits = protonet.ALGORITHM.adapt_and_score({"model": params, "lr": {}}, batch.support_x[t],
                                                         batch.support_y[t], batch.query_x[t], model=model,
                                                         cfg=cfg, steps=0, query_bn="batch")
    np.testing.assert_allclose(logits, hand, rtol=1e-12)
    # The adapted network (prototype classifier as its output layer) gives the same probabilities.
    np.testing.assert_allclose(_softmax(np.asarray(model.apply({"params": adapted}, batch.query_x[t]))),
                               _softmax(hand), rtol=1e-9)
    p = _softmax(hand)
    hand_losses.append(-np.mean(np.log(p[np.arange(len(p)), np.asarray(batch.query_y[t])])))
  grads, metrics = protonet.ALGORITHM.meta_grads({"model": params, "lr": {}}, batch, model=model, cfg=cfg,
                                                 meta_step=0)
  np.testing.assert_allclose(metrics["loss"], np.mean(hand_losses), rtol=1e-12)
  assert not np.any(grads["model"]["head"]["out"]["kernel"])           # the output layer is not used
  assert np.any(grads["model"]["head"]["fc_0"]["kernel"])


@pytest.mark.parametrize("name", ["reptile", "protonet"])
def test_algorithm_trains_and_evaluates_through_the_engine(name, tmp_path):
  from maml_jax import data_sources, episodes, learner
  from maml_jax.train import evaluate_workdir, train_and_evaluate
  cfg = algorithms.configure(get_preset("tiny"), {"algorithm": name, "steps": 2}).validate()
  r = train_and_evaluate(cfg, str(tmp_path), progress=False)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [2] and np.isfinite(lines[0]["loss"]) and "val_accuracy" in lines[0]
  assert json.load(open(tmp_path / "config.json"))["algorithm"] == name
  again = evaluate_workdir(str(tmp_path), progress=False)          # the one evaluator, same episodes
  assert again["test_accuracy"] == pytest.approx(r["test_accuracy"])
  lrn = learner.load_learner(str(tmp_path))
  ep = episodes.EpisodeSampler(data_sources.load_splits(cfg, str(tmp_path))["test"], tasks=1, ways=cfg.ways,
                               shots=1, queries=2, seed=0)(0)
  params, probs = learner.adapt_fn(lrn, cfg.ways)(ep.support_x[0], ep.support_y[0], ep.query_x[0])
  again = learner.predict_fn(lrn.model, cfg.ways)(params, ep.support_x[0], ep.query_x[0])   # adapted network
  np.testing.assert_allclose(again, probs, atol=1e-5)
