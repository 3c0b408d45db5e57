"""MV-DHEL (objectives/mv_dhel.py): the paper's formula in float64 numpy (uniformity within
each view, alignment over every pair of views) and invariance to permuting the views."""

import itertools

import jax
import numpy as np

import loss_cases
from xmodal.losses import groups, objectives

DHEL = objectives.get("mv_dhel")


def _brute(views, scale):
  u = np.stack([np.asarray(v, np.float64) for v in views], 1)
  b, m, _ = u.shape
  out = []
  for i in range(b):
    uniform = sum(np.log(sum(np.exp(scale * u[i, l] @ u[j, l]) for j in range(b) if j != i))
                  for l in range(m))
    align = np.log(sum(np.exp(scale * u[i, l] @ u[i, k]) for l in range(m)
                       for k in range(l + 1, m)))
    out.append(uniform - align)
  return np.mean(out)


def _loss(emb, towers, scale):
  return groups.dense(DHEL, loss_cases.options("mv_dhel"), loss_cases.context(emb), towers,
                      scale)


def test_matches_the_papers_formula():
  k = jax.random.split(jax.random.key(0), 4)
  emb = {t: loss_cases.unit(kk, (7, 5)) for t, kk in zip("wxyz", k)}
  np.testing.assert_allclose(_loss(emb, tuple("wxyz"), 4.0),
                             _brute([emb[t] for t in "wxyz"], 4.0), rtol=1e-5)


def test_invariant_to_permuting_views():
  k = jax.random.split(jax.random.key(1), 3)
  emb = {t: loss_cases.unit(kk, (9, 4)) for t, kk in zip("xyz", k)}
  values = [float(_loss(emb, p, 5.0)) for p in itertools.permutations("xyz")]
  np.testing.assert_allclose(values, values[0], rtol=1e-6)
