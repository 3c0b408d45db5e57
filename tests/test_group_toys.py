"""Toy runs where a group objective must succeed and pairwise CLIP cannot (slow).

Symile's binary XOR data (Saporta et al. 2024): a, b uniform random bit vectors, c = a XOR b.
Every pair of modalities is independent, the triple is not: summed pairwise CLIP has no
signal and predicts the held-out modality at chance; Symile learns it. Real train step,
optimizer and objective on small MLP towers (loss_cases.ToyTowers)."""

import itertools

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import loss_cases
from tiny import make_tiny_config
from xmodal.losses import terms

BITS = 4                         # 16 possible values of the held-out modality: chance 1/16


def _xor(rng, n):
  a = rng.randint(0, 2, (n, BITS))
  b = rng.randint(0, 2, (n, BITS))
  return {"a": 2.0 * a - 1, "b": 2.0 * b - 1, "c": 2.0 * (a ^ b) - 1}


def _config(objective):
  c = make_tiny_config(**{"model.embed_dim": 16, "batch_size": 256, "data.source": "synthetic",
                          "loss.impl": "dense", "optim.lr": 3e-3, "optim.warmup_steps": 1,
                          "optim.end_lr_fraction": 1.0, "train.total_steps": 400})
  c.towers = loss_cases.vector_towers(**{m: dict(features=BITS) for m in "abc"})
  if objective == "symile":
    c.loss.terms = ml_collections.ConfigDict({"symile": terms.section("symile")})
  return c                                        # softmax: every pair a:b, a:c, b:c summed


def _accuracy(objective, model, params):
  """Predict c from (a, b) among all 2^BITS candidates: Symile by the MIP, CLIP by the
  summed cosines of the two query sides."""
  data = _xor(np.random.RandomState(999), 1000)
  cands = np.array(list(itertools.product((-1.0, 1.0), repeat=BITS)))
  z = model.apply({"params": params}, {k: jnp.asarray(v) for k, v in data.items()})
  zc = np.asarray(model.apply({"params": params}, {"c": jnp.asarray(cands)})["c"])
  za, zb = np.asarray(z["a"]), np.asarray(z["b"])
  query = za * zb if objective == "symile" else za + zb
  pred = cands[np.argmax(query @ zc.T, axis=1)]
  return float(np.mean(np.all(pred == data["c"], axis=1)))


@pytest.mark.slow
def test_symile_learns_xor_where_pairwise_clip_cannot():
  accuracy = {}
  for objective in ("softmax", "symile"):
    config = _config(objective)
    model = loss_cases.ToyTowers(config, {m: 64 for m in "abc"}, 16)
    batches = lambda i: _xor(np.random.RandomState(i), 256)  # noqa: E731
    state, history = loss_cases.train_run(config, batches, 400, model)
    accuracy[objective] = _accuracy(objective, model, state["params"])
  assert accuracy["symile"] > 0.9, accuracy                   # chance: 1/16
  assert accuracy["softmax"] < 0.15, accuracy
