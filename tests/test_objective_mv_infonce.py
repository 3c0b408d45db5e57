"""MV-InfoNCE (objectives/mv_infonce.py): the paper's formula in float64 numpy, invariance
to permuting the views, and M = 2 is NT-Xent over the 2B
embeddings (minus log 2)."""

import itertools

import jax
import numpy as np

import loss_cases
from xmodal.losses import groups, objectives

MV = objectives.get("mv_infonce")


def _brute(views, scale):
  u = np.stack([np.asarray(v, np.float64) for v in views], 1)        # [B, M, D]
  b, m, _ = u.shape
  losses = []
  for i in range(b):
    pos = np.log(sum(np.exp(scale * u[i, l] @ u[i, k]) for l in range(m) for k in range(m)
                     if l != k))
    for l in range(m):
      neg = sum(np.exp(scale * u[i, l] @ u[j, k]) for j in range(b) for k in range(m)
                if (j, k) != (i, l))
      losses.append(np.log(neg) - pos)
  return np.mean(losses)


def _loss(emb, towers, scale):
  return groups.dense(MV, loss_cases.options("mv_infonce"), loss_cases.context(emb), towers,
                      scale)


def test_matches_the_papers_formula():
  k = jax.random.split(jax.random.key(0), 3)
  emb = {t: loss_cases.unit(kk, (7, 5)) for t, kk in zip("xyz", k)}
  np.testing.assert_allclose(_loss(emb, ("x", "y", "z"), 4.0),
                             _brute([emb[t] for t in "xyz"], 4.0), rtol=1e-5)


def test_invariant_to_permuting_views():
  k = jax.random.split(jax.random.key(1), 3)
  emb = {t: loss_cases.unit(kk, (9, 4)) for t, kk in zip("xyz", k)}
  values = [float(_loss(emb, p, 5.0)) for p in itertools.permutations("xyz")]
  np.testing.assert_allclose(values, values[0], rtol=1e-6)


def test_two_views_is_nt_xent():
  k = jax.random.split(jax.random.key(2), 2)
  x, y = (np.asarray(loss_cases.unit(kk, (6, 4)), np.float64) for kk in k)
  z = np.concatenate([x, y])
  s = 3.0 * z @ z.T
  np.fill_diagonal(s, -1e9)                       # itself: out of the normaliser
  n = len(x)
  want = np.mean([loss_cases.ce(s[r], np.eye(2 * n)[(r + n) % (2 * n)]) for r in range(2 * n)])
  # the positive pair is counted in both orders (l != m): NT-Xent minus log 2
  np.testing.assert_allclose(_loss({"x": x, "y": y}, ("x", "y"), 3.0), want - np.log(2),
                             rtol=1e-5)
