"""Symile (objectives/symile.py): the paper's O(N)-negative loss written in float64 numpy,
M = 2 is CLIP, negatives permute within each device shard, and more modalities need a key."""

import jax
import numpy as np
import pytest

import loss_cases
from xmodal.losses import groups, objectives

SYMILE = objectives.get("symile")


def _brute(z, perms, scale):
  """z: list of M [B, D] arrays; perms[m][k]: the permutation of the k-th further other
  modality when m is the anchor. Row i of anchor m: positive MIP(z_m_i, others_i), negative
  j: MIP(z_m_i, o1_j, o2_p(j), ...); mean over anchors of the mean row CE."""
  z = [np.asarray(v, np.float64) for v in z]
  m_count, b = len(z), len(z[0])
  total = 0.0
  for m in range(m_count):
    others = [z[k] for k in range(m_count) if k != m]
    neg = others[0].copy()
    for o, p in zip(others[1:], perms[m]):
      neg = neg * o[p]
    pos = z[m].copy()
    for o in others:
      pos = pos * o
    rows = []
    for i in range(b):
      s = [scale * (pos[i].sum() if j == i else z[m][i] @ neg[j]) for j in range(b)]
      rows.append(loss_cases.ce(s, np.eye(b)[i]))
    total += np.mean(rows) / m_count
  return total


@pytest.mark.parametrize("shards", [1, 2])
def test_matches_the_papers_formula(shards):
  k = jax.random.split(jax.random.key(0), 4)
  emb = {t: loss_cases.unit(kk, (8, 5)) for t, kk in zip("xyz", k)}
  ctx = loss_cases.context(emb, rng=k[3], shards=shards)
  got = groups.dense(SYMILE, loss_cases.options("symile"), ctx, ("x", "y", "z"), 6.0)
  perms = []
  for m in range(3):           # what blocks() draws for anchor m: one permutation (of z's
    key = jax.random.split(jax.random.fold_in(k[3], m), 1)[0]   # or y's rows) per shard
    perms.append([np.asarray(groups.permutation_within_shards(key, 8, shards))])
  want = _brute([emb[t] for t in "xyz"], perms, 6.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_two_modalities_is_clip():
  k = jax.random.split(jax.random.key(1), 2)
  emb = {"x": loss_cases.unit(k[0], (12, 6)), "y": loss_cases.unit(k[1], (12, 6))}
  ctx = loss_cases.context(emb)
  clip = loss_cases.dense("softmax", loss_cases.options("softmax"), ctx, 5.0)
  got = groups.dense(SYMILE, loss_cases.options("symile"), ctx, ("x", "y"), 5.0)
  np.testing.assert_allclose(got, clip, rtol=1e-6)


def test_permutations_stay_within_shards():
  p = np.asarray(groups.permutation_within_shards(jax.random.key(2), 32, 4))
  for d in range(4):
    np.testing.assert_array_equal(np.sort(p[d * 8:(d + 1) * 8]), np.arange(d * 8, d * 8 + 8))
  assert np.sum(p != np.arange(32)) > 20


def test_one_anchor_and_a_missing_key():
  k = jax.random.split(jax.random.key(3), 4)
  emb = {t: loss_cases.unit(kk, (8, 5)) for t, kk in zip("xyz", k)}
  out = SYMILE.blocks(loss_cases.options("symile", anchor="z"),
                      loss_cases.context(emb, rng=k[3]), "x", "y", "z")
  assert [p.label for p in out.parts] == ["anchor_z"] and out.parts[0].weight == 1.0
  with pytest.raises(ValueError, match="random key"):
    SYMILE.blocks(loss_cases.options("symile"), loss_cases.context(emb), "x", "y", "z")
