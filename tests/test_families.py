"""The two loss families: the dense formula against a float64 numpy loop, the tile-streamed
statistics against the dense formula (any tile split, linear and log-weight targets, masses
other than 1), and the gradient w.r.t. the scores against autodiff of the dense formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal.losses import families
from xmodal.losses.families import Target


def _ce_loop(s, comps):
  """sum_k alpha_ik sum_j q_ijk (lse_i - s_ij) per row i, written as loops in float64;
  comps: [(alpha [r], kind, array [r, c])]."""
  s = np.asarray(s, np.float64)
  out = np.zeros(s.shape[0])
  for i in range(s.shape[0]):
    lse = np.log(np.sum(np.exp(s[i] - s[i].max()))) + s[i].max()
    for alpha, kind, a in comps:
      a = np.asarray(a, np.float64)[i]
      q = a / a.sum() if kind == "w" else np.exp(a - a.max()) / np.exp(a - a.max()).sum()
      out[i] += alpha[i] * sum(q[j] * (lse - s[i, j]) for j in range(s.shape[1]))
  return out


def _problem(seed=0, r=6, c=9):
  rng = np.random.RandomState(seed)
  s = rng.normal(0, 3, (r, c)).astype(np.float32)
  w = (rng.rand(r, c) < 0.4).astype(np.float32)
  w[np.arange(r), np.arange(r) % c] = 1.0                    # every row has a positive
  logw = rng.normal(0, 2, (r, c)).astype(np.float32)
  alpha_w = rng.uniform(0.2, 1.0, r).astype(np.float32)      # masses need not sum to 1
  alpha_l = rng.uniform(0.1, 0.5, r).astype(np.float32)
  return s, w, logw, alpha_w, alpha_l


def test_softmax_dense_matches_loop_both_axes():
  s, w, logw, aw, al = _problem()
  comps = [Target(jnp.asarray(aw), w=jnp.asarray(w)), Target(jnp.asarray(al), logw=jnp.asarray(logw))]
  got = families.softmax_dense(jnp.asarray(s), comps, axis=1)
  want = _ce_loop(s, [(aw, "w", w), (al, "l", logw)])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # axis 0: the same per column, i.e. the transposed problem
  a_c = np.linspace(0.3, 0.9, s.shape[1]).astype(np.float32)
  comps_t = [Target(jnp.asarray(a_c), w=jnp.asarray(w))]
  np.testing.assert_allclose(families.softmax_dense(jnp.asarray(s), comps_t, axis=0),
                             _ce_loop(s.T, [(a_c, "w", w.T)]), rtol=1e-5)


@pytest.mark.parametrize("tile", [1, 4, 9])
def test_streamed_statistics_equal_dense(tile):
  """Tiles of `tile` columns (the last one padded and masked) give the dense losses and,
  from the saved statistics, the dense formula's gradient w.r.t. the scores."""
  s, w, logw, aw, al = _problem(1)
  r, c = s.shape
  comps = lambda ws, ls: [Target(jnp.asarray(aw), w=ws), Target(jnp.asarray(al), logw=ls)]  # noqa: E731
  full = comps(jnp.asarray(w), jnp.asarray(logw))
  want = families.softmax_dense(jnp.asarray(s), full, axis=1)
  pad = -(-c // tile) * tile - c
  sp = jnp.pad(jnp.asarray(s), ((0, 0), (0, pad)))
  wp = jnp.pad(jnp.asarray(w), ((0, 0), (0, pad)), constant_values=1.0)   # garbage, masked
  lp = jnp.pad(jnp.asarray(logw), ((0, 0), (0, pad)), constant_values=5.0)
  valid = jnp.arange(c + pad) < c
  stats = families.softmax_init(r, full)
  for k in range(0, c + pad, tile):
    sl = slice(k, k + tile)
    stats = families.softmax_update(stats, sp[:, sl], comps(wp[:, sl], lp[:, sl]), 1,
                                    valid[None, sl])
  got, saved = families.softmax_finish(stats, [aw, al])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grad = jax.grad(lambda x: jnp.sum(families.softmax_dense(x, full, axis=1)))(jnp.asarray(s))
  tiles = [families.softmax_grad(sp[:, k:k + tile], comps(wp[:, k:k + tile], lp[:, k:k + tile]),
                                 saved, 1, valid[None, k:k + tile])
           for k in range(0, c + pad, tile)]
  np.testing.assert_allclose(jnp.concatenate(tiles, axis=1)[:, :c], grad, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(jnp.concatenate(tiles, axis=1)[:, c:], 0.0)


def test_confident_row_is_exact():
  """A row whose one-hot positive is its maximum by a wide margin: the loss is
  log(1 + sum exp(s_j - s_pos)) to float32 precision (no large-minus-large rounding), as a
  float64 computation gives it."""
  s = np.array([[95.0, 80.0, 79.5, 81.25]], np.float32)
  w = np.array([[1.0, 0, 0, 0]], np.float32)
  got = families.softmax_dense(jnp.asarray(s), [Target(1.0, w=jnp.asarray(w))], axis=1)
  want = np.log1p(np.sum(np.exp(s[0, 1:].astype(np.float64) - 95.0)))
  assert want < 1e-5
  np.testing.assert_allclose(got[0], want, rtol=1e-5)
  stats = families.softmax_update(families.softmax_init(1, [Target(1.0, w=w)]), jnp.asarray(s),
                                  [Target(1.0, w=jnp.asarray(w))], 1)
  np.testing.assert_allclose(families.softmax_finish(stats, [1.0])[0][0], want, rtol=1e-5)


def test_sigmoid_terms_match_loop_and_are_exact_when_confident():
  rng = np.random.RandomState(2)
  s = rng.normal(0, 20, (5, 7)).astype(np.float32)
  w = rng.rand(5, 7).astype(np.float32)
  got = families.sigmoid_terms(jnp.asarray(s), jnp.asarray(w))
  s64, w64 = s.astype(np.float64), w.astype(np.float64)
  want = -w64 * np.log(1 / (1 + np.exp(-s64))) - (1 - w64) * np.log(1 / (1 + np.exp(s64)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30)
  # a confident positive (logit 83.5): its term is exp(-83.5) ~ 5e-37, not 0 or rounding
  t = families.sigmoid_terms(jnp.float32(83.5), jnp.float32(1.0))
  np.testing.assert_allclose(t, np.exp(-83.5), rtol=1e-5)
  g = jax.grad(lambda x: families.sigmoid_dense(x, jnp.asarray(w)))(jnp.asarray(s))
  np.testing.assert_allclose(families.sigmoid_grad(jnp.asarray(s), jnp.asarray(w)), g, rtol=1e-5,
                             atol=1e-7)
