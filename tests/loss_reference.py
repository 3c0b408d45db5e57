"""Float64 numpy references for the contrastive losses (value and gradients), and inputs in
the confident regime where float32 shortcuts lose digits.

Confident regime: scale 100, bias -16.5, every positive pair well above its negatives, so
the mean loss is ~0.02 while single logits are ~10-20: a loss computed as a difference of
large terms (all pairs as negatives then corrected, or lse - positive) keeps only a few
significant digits of it in float32.
"""

import numpy as np

CONFIDENT = {"scale": 100.0, "bias": -16.5}


def confident_inputs(name: str, batch: int = 64, seed: int = 0):
  """x, y float32 [batch, 2 * batch] unit rows: x_i . y_i = c (0.2 sigmoid, 0.08 softmax),
  x_i . y_j ~ 1e-3 otherwise, so the mean loss at CONFIDENT is ~0.02 (checked)."""
  rng = np.random.default_rng(seed)
  dim = 2 * batch
  q = np.linalg.qr(rng.standard_normal((dim, dim)))[0]       # orthonormal rows
  c = 0.2 if name == "sigmoid" else 0.08

  def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)

  def noise():
    return 0.03 * unit(rng.standard_normal((batch, dim)))

  x = unit(q[:batch] + noise())
  y = unit(c * q[:batch] + np.sqrt(1 - c * c) * q[batch:] + noise())
  return x.astype(np.float32), y.astype(np.float32)


def loss_and_grads(name: str, x, y, scale: float, bias: float = 0.0):
  """(loss, dx, dy, dscale, dbias) in float64, for the diagonal positives. dbias is 0 for
  softmax."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  batch = len(x)
  dots = x @ y.T
  if name == "sigmoid":
    z = 2 * np.eye(batch) - 1
    logits = scale * dots + bias
    loss = np.logaddexp(0, -z * logits).sum() / batch
    g = -z / (1 + np.exp(z * logits)) / batch                 # dL/dlogits
  else:
    s = scale * dots

    def log_softmax(a, axis):
      top = a.max(axis=axis, keepdims=True)
      return a - top - np.log(np.exp(a - top).sum(axis=axis, keepdims=True))

    row, col = log_softmax(s, 1), log_softmax(s, 0)
    loss = -0.5 * (np.trace(row) + np.trace(col)) / batch
    g = 0.5 * (np.exp(row) + np.exp(col) - 2 * np.eye(batch)) / batch
  dbias = g.sum() if name == "sigmoid" else 0.0
  return loss, scale * g @ y, scale * g.T @ x, (g * dots).sum(), dbias


def rel(a, b) -> float:
  """||a - b|| / ||b|| in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
