"""Cross-modal retrieval Recall@K: row i of each modality is the match of row i of the
other. Recall@K is the fraction of queries whose match ranks in the top K.

Non-finite embeddings (a diverged model) never count as found: a query with a NaN or inf
embedding, or whose match has one, is a miss, and a gallery item with one never outranks
a finite match (its scores are taken as -inf)."""

import numpy as np


def scores(queries, gallery) -> np.ndarray:
  """queries [N, D], gallery [M, D] -> [N, M] dot products, -inf where not finite."""
  with np.errstate(invalid="ignore", over="ignore"):
    s = queries @ gallery.T
  return np.where(np.isfinite(s), s, -np.inf)


def recall_at_k(queries, gallery, ks=(1, 5, 10)) -> dict:
  """queries [N, D], gallery [N, D] (unit vectors, row i matches row i) -> {"Rk": ..}
  (R1 = Recall@1; a query whose match scores NaN/inf is a miss)."""
  s = scores(queries, gallery)
  # rank of the true match: how many other gallery items score at least as high (ties
  # count against, so duplicate gallery items cannot all be "found" at rank 0).
  true = np.diag(s)
  rank = (s > true[:, None]).sum(axis=1) + (s == true[:, None]).sum(axis=1) - 1
  found = np.isfinite(true)
  return {f"R{k}": float(np.mean(found & (rank < k))) for k in ks}


def nonfinite_rows(x) -> int:
  """How many rows of x [N, D] hold a NaN or inf."""
  return int(np.sum(~np.all(np.isfinite(x), axis=1)))


def bidirectional(a_name, a, b_name, b, ks=(1, 5, 10)) -> dict:
  """{"a_to_b/R1": .., "b_to_a/R1": .., ...} for paired embeddings a, b [N, D]."""
  out = {}
  for (qn, q), (gn, g) in (((a_name, a), (b_name, b)), ((b_name, b), (a_name, a))):
    for k, v in recall_at_k(q, g, ks).items():
      out[f"{qn}_to_{gn}/{k}"] = v
  return out
