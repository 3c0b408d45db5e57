"""Cross-modal retrieval Recall@K: row i of each modality is the match of row i of the
other. Recall@K is the fraction of queries whose match ranks in the top K."""

import numpy as np


def recall_at_k(queries, gallery, ks=(1, 5, 10)) -> dict:
  """queries [N, D], gallery [N, D] (unit vectors, row i matches row i) -> {"Rk": ..}
  (R1 = Recall@1)."""
  scores = queries @ gallery.T
  # rank of the true match: how many other gallery items score at least as high (ties
  # count against, so duplicate gallery items cannot all be "found" at rank 0).
  true = np.diag(scores)
  rank = (scores > true[:, None]).sum(axis=1) + (scores == true[:, None]).sum(axis=1) - 1
  return {f"R{k}": float(np.mean(rank < k)) for k in ks}


def bidirectional(a_name, a, b_name, b, ks=(1, 5, 10)) -> dict:
  """{"a_to_b/R1": .., "b_to_a/R1": .., ...} for paired embeddings a, b [N, D]."""
  out = {}
  for (qn, q), (gn, g) in (((a_name, a), (b_name, b)), ((b_name, b), (a_name, a))):
    for k, v in recall_at_k(q, g, ks).items():
      out[f"{qn}_to_{gn}/{k}"] = v
  return out
