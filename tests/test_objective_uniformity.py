"""Uniformity regulariser (objectives/uniformity.py): the per-row form in float64 numpy, at
most the batch-level metric of evaluate/geometry.py (Jensen), and lower for spread-out
embeddings than for clustered ones."""

import jax
import numpy as np

import loss_cases
from xmodal.evaluate import geometry
from xmodal.losses import groups, objectives

UNIF = objectives.get("uniformity")


def _brute(x, t=2.0):
  x = np.asarray(x, np.float64)
  n = len(x)
  rows = [np.log(np.mean([np.exp(-t * np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i]))
          for i in range(n)]
  return np.mean(rows)


def _loss(emb, towers):
  return float(groups.dense(UNIF, loss_cases.options("uniformity"), loss_cases.context(emb),
                            towers, 1.0))


def test_matches_the_definition_and_bounds_the_metric():
  k = jax.random.split(jax.random.key(0), 2)
  emb = {"x": loss_cases.unit(k[0], (10, 4)), "y": loss_cases.unit(k[1], (10, 4))}
  want = np.mean([_brute(emb["x"]), _brute(emb["y"])])
  np.testing.assert_allclose(_loss(emb, ("x", "y")), want, rtol=1e-5)
  assert _brute(emb["x"]) <= geometry.uniformity(np.asarray(emb["x"])) + 1e-9


def test_spread_is_lower_than_clustered():
  k = jax.random.split(jax.random.key(1), 2)
  spread = loss_cases.unit(k[0], (16, 8))
  clustered = loss_cases.unit(k[1], (16, 8)) * 0.1 + np.eye(8)[0]
  clustered = clustered / np.linalg.norm(clustered, axis=1, keepdims=True)
  assert _loss({"x": spread}, ("x",)) < _loss({"x": clustered}, ("x",)) - 1.0
