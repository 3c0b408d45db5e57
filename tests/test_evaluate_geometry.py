"""Geometry metrics against their definitions, computed by brute force."""

import itertools

import numpy as np

from xmodal.evaluate import geometry


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_metrics_equal_their_definitions():
  rng = np.random.default_rng(0)
  a, b = _unit(rng.normal(size=(20, 5))), _unit(rng.normal(size=(20, 5)) + 2.0)
  pairs = [np.exp(-2 * np.sum((a[i] - a[j]) ** 2))
           for i, j in itertools.permutations(range(20), 2)]
  np.testing.assert_allclose(geometry.uniformity(a, block=7), np.log(np.mean(pairs)), rtol=1e-10)
  np.testing.assert_allclose(geometry.modality_gap(a, b),
                             np.linalg.norm(a.mean(0) - b.mean(0)))
  np.testing.assert_allclose(geometry.alignment(a, b), np.mean(np.sum((a - b) ** 2, axis=1)))
  m = geometry.pair_metrics("image", a, "text", b)
  assert set(m) == {"image-text/gap", "image-text/alignment", "image/uniformity",
                    "text/uniformity", "image/effective_rank", "text/effective_rank"}


def test_limiting_cases():
  rng = np.random.default_rng(1)
  x = _unit(rng.normal(size=(64, 8)))
  assert geometry.modality_gap(x, x) == 0.0 and geometry.alignment(x, x) == 0.0
  # A space that uses 3 of 8 dimensions equally has effective rank close to 3; one
  # collapsed onto one point has uniformity 0 (every pair at distance 0).
  three = np.zeros((300, 8))
  three[:, :3] = rng.normal(size=(300, 3))
  assert 2.7 < geometry.effective_rank(three) <= 3.0
  same = np.tile(x[:1], (10, 1))
  np.testing.assert_allclose(geometry.uniformity(same), 0.0, atol=1e-12)
