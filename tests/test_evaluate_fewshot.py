"""Few-shot least squares equals its closed form; shots are drawn per class."""

import numpy as np

from xmodal.evaluate import fewshot


def test_fit_is_the_ridge_closed_form():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 6))
  y = rng.integers(0, 3, 30)
  params = fewshot.fit(x, y, 3, l2=0.5)
  # Independent closed form: ridge on centred features via an augmented least squares.
  xc = x - x.mean(axis=0)
  t = 2.0 * np.eye(3)[y] - 1.0
  aug_x = np.concatenate([xc, np.sqrt(0.5) * np.eye(6)])
  aug_t = np.concatenate([t - t.mean(axis=0), np.zeros((6, 3))])
  w, *_ = np.linalg.lstsq(aug_x, aug_t, rcond=None)
  np.testing.assert_allclose(params["w"], w, atol=1e-10)
  np.testing.assert_allclose(params["b"], t.mean(axis=0))


def test_shots_per_class_and_accuracy_grows_with_shots():
  rng = np.random.default_rng(2)
  centres = rng.normal(size=(10, 32)) * 1.2
  pool_y = np.repeat(np.arange(10), 40)
  pool_x = centres[pool_y] + rng.normal(size=(400, 32))
  test_y = rng.integers(0, 10, 500)
  test_x = centres[test_y] + rng.normal(size=(500, 32))
  idx = fewshot.draw_shots(pool_y, 5, 10)
  assert np.all(np.bincount(pool_y[idx], minlength=10) == 5)
  out = fewshot.evaluate(pool_x, pool_y, test_x, test_y, 10, shots=(1, 25))
  assert out["25shot/top1"] > out["1shot/top1"] > 0.1 + 0.05   # chance is 0.1
