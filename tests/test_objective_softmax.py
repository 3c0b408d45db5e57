"""CLIP (objectives/softmax.py): against a brute-force float64 loop of its formula (label
smoothing, group ids, K captions per image), and the 1-to-K limiting cases."""

import jax
import jax.numpy as jnp
import numpy as np

import loss_cases


def _brute(x, y, scale, eps, ids_x, ids_y):
  """1/2 [mean over x rows + mean over y rows] of CE(target, softmax(scores)), the target
  (1 - eps) uniform over positives (equal ids) + eps uniform over everything."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  s = scale * x @ y.T
  rows, cols = [], []
  for i in range(len(x)):
    pos = np.array([ids_y[j] == ids_x[i] for j in range(len(y))], np.float64)
    rows.append(loss_cases.ce(s[i], (1 - eps) * pos / pos.sum() + eps / len(y)))
  for j in range(len(y)):
    pos = np.array([ids_x[i] == ids_y[j] for i in range(len(x))], np.float64)
    cols.append(loss_cases.ce(s[:, j], (1 - eps) * pos / pos.sum() + eps / len(x)))
  return 0.5 * (np.mean(rows) + np.mean(cols))


def test_matches_brute_force_with_smoothing_and_groups():
  k = jax.random.split(jax.random.key(0), 2)
  x, y = loss_cases.unit(k[0], (12, 6)), loss_cases.unit(k[1], (12, 6))
  ids = jnp.array([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7])
  for eps in (0.0, 0.1):
    got = loss_cases.dense("softmax", loss_cases.options("softmax", label_smoothing=eps),
                           loss_cases.context({"x": x, "y": y}, ids=ids), 7.0)
    np.testing.assert_allclose(got, _brute(x, y, 7.0, eps, ids, ids), rtol=1e-5)


def test_k_captions_per_image_match_brute_force():
  """y [B, K, D]: the K rows of example i are its captions (ids repeated)."""
  k = jax.random.split(jax.random.key(1), 2)
  b, kk = 7, 3
  x, y = loss_cases.unit(k[0], (b, 5)), loss_cases.unit(k[1], (b, kk, 5))
  got = loss_cases.dense("softmax", loss_cases.options("softmax"),
                         loss_cases.context({"x": x, "y": y}), 6.0)
  want = _brute(x, y.reshape(b * kk, 5), 6.0, 0.0, np.arange(b), np.repeat(np.arange(b), kk))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_one_to_k_limits():
  """K = 1 is CLIP; for any K the loss is the image side (cross-entropy against the
  uniform distribution over the image's K captions, mean over images) plus the text side
  (sum over the B*K captions of their one-hot cross-entropy, over B) divided by K, halved."""
  k = jax.random.split(jax.random.key(2), 2)
  b, kk, scale = 6, 4, 5.0
  x, y = loss_cases.unit(k[0], (b, 8)), loss_cases.unit(k[1], (b, kk, 8))
  opts = loss_cases.options("softmax")
  one = loss_cases.dense("softmax", opts, loss_cases.context({"x": x, "y": y[:, :1]}), scale)
  clip = loss_cases.dense("softmax", opts, loss_cases.context({"x": x, "y": y[:, 0]}), scale)
  np.testing.assert_allclose(one, clip, rtol=1e-6)
  s = scale * np.asarray(x, np.float64) @ np.asarray(y, np.float64).reshape(b * kk, 8).T
  owner = np.repeat(np.arange(b), kk)
  image_side = np.mean([loss_cases.ce(s[i], (owner == i) / kk) for i in range(b)])
  text_side = sum(loss_cases.ce(s[:, j], np.arange(b) == owner[j]) for j in range(b * kk)) / b
  got = loss_cases.dense("softmax", opts, loss_cases.context({"x": x, "y": y}), scale)
  np.testing.assert_allclose(got, 0.5 * (image_side + text_side / kk), rtol=1e-5)
