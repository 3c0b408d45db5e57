"""The geometry of a shared embedding space, per modality pair ("contrastive gap" analyses).

For paired unit embeddings a, b [N, D] (row i of a matches row i of b):

  gap        || mean(a) - mean(b) ||            distance between the modality centroids
                                                (Liang et al. 2022, "Mind the Gap")
  alignment  mean_i || a_i - b_i ||^2           (Wang & Isola 2020; lower = better aligned)
  uniformity log mean_{i != j} exp(-2 || x_i - x_j ||^2), per modality (Wang & Isola 2020,
             t = 2; lower = more uniform on the sphere)
  effective rank  exp(entropy of the normalised singular values of the centred embeddings)
             (Roy & Vetterli 2007), per modality: how many dimensions the space really uses

Uniformity is computed from the Gram matrix (||x - y||^2 = 2 - 2 x.y for unit vectors) in
blocks of rows, so memory is [block, N].
"""

import numpy as np


def modality_gap(a, b) -> float:
  return float(np.linalg.norm(np.mean(a, axis=0) - np.mean(b, axis=0)))


def alignment(a, b) -> float:
  return float(np.mean(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=1)))


def uniformity(x, t: float = 2.0, block: int = 1024) -> float:
  x = np.asarray(x, np.float64)
  n = len(x)
  if n < 2:
    return float("nan")
  log_total = -np.inf                                   # running log-sum-exp over blocks
  for start in range(0, n, block):
    e = -t * np.maximum(2.0 - 2.0 * (x[start:start + block] @ x.T), 0.0)
    rows = np.arange(start, min(start + block, n))
    e[rows - start, rows] = -np.inf                     # leave out i == j
    m = e.max()
    log_total = np.logaddexp(log_total, m + np.log(np.exp(e - m).sum()))
  return float(log_total - np.log(n * (n - 1)))


def effective_rank(x) -> float:
  x = np.asarray(x, np.float64)
  s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
  p = s / s.sum() if s.sum() > 0 else s
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def pair_metrics(a_name: str, a, b_name: str, b) -> dict:
  """Flat metrics for one modality pair: "<a>-<b>/gap", "<a>-<b>/alignment", and per
  modality "<m>/uniformity", "<m>/effective_rank" (TensorBoard-safe names, as the losses'
  "loss/<a>-<b>")."""
  out = {f"{a_name}-{b_name}/gap": modality_gap(a, b),
         f"{a_name}-{b_name}/alignment": alignment(a, b)}
  for name, x in ((a_name, a), (b_name, b)):
    out[f"{name}/uniformity"] = uniformity(x)
    out[f"{name}/effective_rank"] = effective_rank(x)
  return out
