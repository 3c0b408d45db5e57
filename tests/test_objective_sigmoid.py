"""SigLIP (objectives/sigmoid.py) against a brute-force float64 loop of its formula, with
label smoothing and group ids, and with K captions per image."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

import loss_cases


def _brute(x, y, scale, bias, eps, ids_x, ids_y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  total = 0.0
  for i, j in itertools.product(range(len(x)), range(len(y))):
    w = (1 - eps) * float(ids_x[i] == ids_y[j]) + eps / 2
    logit = scale * x[i] @ y[j] + bias
    total += -w * np.log(1 / (1 + np.exp(-logit))) - (1 - w) * np.log(1 / (1 + np.exp(logit)))
  return total / len(x)


def test_matches_brute_force():
  k = jax.random.split(jax.random.key(0), 2)
  x, y = loss_cases.unit(k[0], (10, 6)), loss_cases.unit(k[1], (10, 6))
  ids = jnp.array([0, 1, 1, 2, 3, 3, 4, 5, 6, 6])
  for eps in (0.0, 0.2):
    got = loss_cases.dense("sigmoid", loss_cases.options("sigmoid", label_smoothing=eps),
                           loss_cases.context({"x": x, "y": y}, ids=ids), 10.0, -6.0)
    np.testing.assert_allclose(got, _brute(x, y, 10.0, -6.0, eps, ids, ids), rtol=1e-5)


def test_k_captions_are_each_a_positive():
  k = jax.random.split(jax.random.key(1), 2)
  x, y = loss_cases.unit(k[0], (5, 4)), loss_cases.unit(k[1], (5, 3, 4))
  got = loss_cases.dense("sigmoid", loss_cases.options("sigmoid"),
                         loss_cases.context({"x": x, "y": y}), 8.0, -3.0)
  want = _brute(x, y.reshape(15, 4), 8.0, -3.0, 0.0, np.arange(5), np.repeat(np.arange(5), 3))
  np.testing.assert_allclose(got, want, rtol=1e-5)
