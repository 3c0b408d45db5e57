"""kNN probes against brute force."""

import numpy as np

from xmodal.evaluate import knn


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_neighbours_and_vote_match_brute_force():
  rng = np.random.default_rng(0)
  ref, test = _unit(rng.normal(size=(50, 8))), _unit(rng.normal(size=(7, 8)))
  labels = rng.integers(0, 4, 50)
  idx, sims = knn.neighbours(test, ref, 5, block=3)
  for i in range(7):
    s = ref @ test[i]
    expected = np.argsort(-s, kind="stable")[:5]
    np.testing.assert_array_equal(idx[i], expected)
    np.testing.assert_allclose(sims[i], s[expected], rtol=1e-6)
  pred = knn.classify(test, ref, labels, 4, k=5, temperature=0.1)
  for i in range(7):
    votes = np.zeros(4)
    for j in idx[i]:
      votes[labels[j]] += np.exp((ref[j] @ test[i]) / 0.1)
    assert pred[i] == np.argmax(votes)


def test_regression_recovers_a_smooth_target_and_metrics():
  rng = np.random.default_rng(1)
  ref = _unit(rng.normal(size=(400, 4)))
  test = _unit(rng.normal(size=(100, 4)))
  mix = rng.normal(size=(4, 6))
  pred = knn.regress(test, ref, ref @ mix, k=5)
  m = knn.regression_metrics(pred, test @ mix)
  assert m["pearson"] > 0.9
  assert knn.regression_metrics(test @ mix, test @ mix) == {"pearson": 1.0, "mse": 0.0}
