"""Mixup contrastive (objectives/mixup.py): MixCo/M3Co's loss written with its mixing matrix
in float64, partners stay within each device's shard, and lam = 1 is CLIP."""

import jax
import numpy as np
import pytest

import loss_cases
from xmodal.losses import objectives


def _brute(z, y, partner, lam, scale):
  """P = diag(lam) + [j = partner(i)] (1 - lam_i); mixed rows unit(lam z_i + (1 - lam)
  z_partner); 1/2 [mean_i sum_j P_ij CE_row + mean_j sum_i P_ij CE_col], P unnormalised."""
  z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
  lam, b = np.asarray(lam, np.float64), len(z)
  mixed = lam[:, None] * z + (1 - lam[:, None]) * z[partner]
  mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
  s = scale * mixed @ y.T
  p = np.diag(lam)
  for i in range(b):
    p[i, partner[i]] += 1 - lam[i]
  rows = [loss_cases.ce(s[i], p[i]) for i in range(b)]
  cols = [loss_cases.ce(s[:, j], p[:, j]) for j in range(b)]
  return 0.5 * (np.mean(rows) + np.mean(cols))


@pytest.mark.parametrize("side, shards", [("a", 1), ("b", 4)])
def test_matches_mixco_formula(side, shards):
  k = jax.random.split(jax.random.key(0), 3)
  x, y = loss_cases.unit(k[0], (12, 5)), loss_cases.unit(k[1], (12, 5))
  opts = loss_cases.options("mixup", side=side, prob=0.7)
  ctx = loss_cases.context({"x": x, "y": y}, rng=k[2], shards=shards)
  got = loss_cases.dense("mixup", opts, ctx, 6.0)
  partner, lam = objectives.get("mixup").draw(opts, k[2], 12, shards)
  assert np.sum(np.asarray(lam) < 1) >= 3                     # some rows are mixed
  mixed, other = (x, y) if side == "a" else (y, x)
  # side b: the mixed tower is the columns, the same loss with the directions exchanged
  want = _brute(mixed, other, np.asarray(partner), lam, 6.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_partners_are_a_permutation_within_each_shard():
  opts = loss_cases.options("mixup")
  partner, _ = objectives.get("mixup").draw(opts, jax.random.key(3), 32, 4)
  partner = np.asarray(partner)
  for d in range(4):
    block = partner[d * 8:(d + 1) * 8]
    np.testing.assert_array_equal(np.sort(block), np.arange(d * 8, (d + 1) * 8))
  assert np.sum(partner != np.arange(32)) > 20


def test_lambda_one_is_clip():
  k = jax.random.split(jax.random.key(1), 3)
  emb = {"x": loss_cases.unit(k[0], (16, 6)), "y": loss_cases.unit(k[1], (16, 6))}
  ctx = loss_cases.context(emb, rng=k[2], shards=2)
  clip = loss_cases.dense("softmax", loss_cases.options("softmax"), ctx, 5.0)
  np.testing.assert_allclose(
      loss_cases.dense("mixup", loss_cases.options("mixup", fixed=1.0, prob=1.0), ctx, 5.0),
      clip, rtol=1e-6)
  mixed = loss_cases.dense("mixup", loss_cases.options("mixup", prob=1.0), ctx, 5.0)
  assert abs(float(mixed) - float(clip)) > 0.05
