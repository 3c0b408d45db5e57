"""Few-shot linear classification with the closed-form least-squares probe (big_vision's
few-shot evaluation).

From k labelled examples per class (k = 1, 5, 10, 25), fit a ridge regression from
centred features to +-1 class targets and classify test rows by the largest output:

    Xc = X - mean(X),  T = 2 * onehot(y) - 1,   W = (Xc^T Xc + l2 I)^-1 Xc^T T,  b = mean(T)
    predict(x) = argmax((x - mean(X)) W + b)

The solve is D x D, so it is exact and fast for any number of shots; l2 is chosen per
shot count on a validation part of the labelled pool. Shots are drawn with a fixed seed.
"""

import numpy as np

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2 = tuple(2.0 ** np.arange(-10, 11, 2))


def fit(x, y, num_classes: int, l2: float) -> dict:
  """x [N, D], y [N] -> {"mean": [D], "w": [D, C], "b": [C]} (float64 normal equations)."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=0)
  xc = x - mean
  targets = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
  w = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ targets)
  return {"mean": mean, "w": w, "b": targets.mean(axis=0)}


def predict(params, x) -> np.ndarray:
  return np.argmax((np.asarray(x, np.float64) - params["mean"]) @ params["w"] + params["b"],
                   axis=1)


def draw_shots(y, shots: int, num_classes: int, seed: int = 0) -> np.ndarray:
  """Indices of `shots` examples of every class (fewer where a class has fewer)."""
  rng = np.random.default_rng(seed)
  y = np.asarray(y)
  picked = [rng.permutation(np.flatnonzero(y == c))[:shots] for c in range(num_classes)]
  return np.concatenate(picked)


def evaluate(pool_x, pool_y, test_x, test_y, num_classes: int, shots=DEFAULT_SHOTS,
             l2_values=DEFAULT_L2, seed: int = 0) -> dict:
  """{"<k>shot/top1": test accuracy} for each shot count. For each k, l2 is chosen by
  accuracy on the labelled pool's rows that were not drawn as shots (when there are any),
  then the probe on the k shots scores the test split."""
  out = {}
  for k in shots:
    idx = draw_shots(pool_y, k, num_classes, seed + k)
    rest = np.setdiff1d(np.arange(len(pool_y)), idx)
    l2 = l2_values[len(l2_values) // 2]
    if len(rest):
      scores = [np.mean(predict(fit(pool_x[idx], pool_y[idx], num_classes, v), pool_x[rest])
                        == pool_y[rest]) for v in l2_values]
      l2 = l2_values[int(np.argmax(scores))]
    params = fit(pool_x[idx], pool_y[idx], num_classes, l2)
    out[f"{k}shot/top1"] = float(np.mean(predict(params, test_x) == np.asarray(test_y)))
  return out
