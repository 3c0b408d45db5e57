"""The JAX L-BFGS linear probe equals scikit-learn's LogisticRegression on the same data."""

import numpy as np
import pytest

from xmodal.evaluate import linear_probe

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def _blobs(rng, n, classes=5, dim=16, spread=1.6):
  centres = rng.normal(size=(classes, dim))
  y = rng.integers(0, classes, n)
  x = centres[y] + spread * rng.normal(size=(n, dim))
  return x.astype(np.float32), y


@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_probe_matches_sklearn_logistic_regression(l2):
  rng = np.random.default_rng(0)
  x, y = _blobs(rng, 600)
  tx, ty = _blobs(np.random.default_rng(0), 400)   # same centres (same seed), new noise
  params = linear_probe.fit(x, y, l2, num_classes=5)
  ref = sklearn_linear.LogisticRegression(C=1.0 / (l2 * len(x)), max_iter=5000, tol=1e-8)
  ref.fit(x, y)
  ours, theirs = linear_probe.accuracy(params, tx, ty), float(ref.score(tx, ty))
  assert abs(ours - theirs) <= 0.01, (ours, theirs)
  # Same objective, same minimiser: the weights agree up to the softmax's shift freedom.
  w = np.asarray(params["w"]) - np.asarray(params["w"]).mean(axis=1, keepdims=True)
  w_ref = ref.coef_.T - ref.coef_.T.mean(axis=1, keepdims=True)
  np.testing.assert_allclose(w, w_ref, atol=2e-3 * np.abs(w_ref).max())


def test_sweep_prefers_regularisation_when_train_is_tiny_and_beats_chance():
  rng = np.random.default_rng(1)
  x, y = _blobs(rng, 60, spread=2.5)
  vx, vy = _blobs(np.random.default_rng(1), 300, spread=2.5)
  out = linear_probe.sweep(x, y, vx[:150], vy[:150], vx[150:], vy[150:], num_classes=5,
                           l2_values=(1e-6, 1e-2, 1.0))
  assert out["top1"] > 0.5 and out["l2"] in (1e-6, 1e-2, 1.0)
