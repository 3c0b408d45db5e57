"""k-nearest-neighbour probes on frozen embeddings: classification (DINO-style weighted
vote) and regression of vector targets (e.g. gene expression from histology, HESCAPE).

Neighbours are by cosine similarity between unit embeddings, test rows against a
reference ("train") set, found in blocks of test rows so memory is [block, N_ref]:

  classify  vote_c = sum over the k neighbours of class c of exp(sim / temperature)
  regress   prediction = mean of the k neighbours' target vectors; scored by the mean
            Pearson correlation over target dimensions (and over rows), and by MSE.
"""

import numpy as np


def neighbours(test, ref, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """test [M, D], ref [N, D] unit vectors -> (indices [M, k], similarities [M, k]) of the
  k most similar reference rows, most similar first (ties by lower index)."""
  test, ref = np.asarray(test, np.float32), np.asarray(ref, np.float32)
  k = min(k, len(ref))
  idx, sims = [], []
  for start in range(0, len(test), block):
    s = test[start:start + block] @ ref.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    idx.append(top)
    sims.append(np.take_along_axis(s, top, axis=1))
  return np.concatenate(idx), np.concatenate(sims)


def classify(test, ref, ref_labels, num_classes: int, k: int = 20,
             temperature: float = 0.07) -> np.ndarray:
  """Predicted labels [M] by a similarity-weighted vote of the k nearest reference rows."""
  idx, sims = neighbours(test, ref, k)
  votes = np.zeros((len(idx), num_classes))
  weights = np.exp(sims / temperature)
  np.add.at(votes, (np.arange(len(idx))[:, None], np.asarray(ref_labels)[idx]), weights)
  return np.argmax(votes, axis=1)


def regress(test, ref, ref_targets, k: int = 20) -> np.ndarray:
  """Predicted target vectors [M, T]: the mean of the k nearest reference rows' targets."""
  idx, _ = neighbours(test, ref, k)
  return np.asarray(ref_targets, np.float64)[idx].mean(axis=1)


def regression_metrics(pred, target) -> dict:
  """{"pearson": mean over target dimensions of the correlation across rows, "mse"}.
  Dimensions that are constant in either array are left out of the mean."""
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  pc, tc = pred - pred.mean(axis=0), target - target.mean(axis=0)
  denom = np.sqrt((pc ** 2).sum(axis=0) * (tc ** 2).sum(axis=0))
  ok = denom > 0
  pearson = float(np.mean((pc * tc).sum(axis=0)[ok] / denom[ok])) if ok.any() else float("nan")
  return {"pearson": pearson, "mse": float(np.mean((pred - target) ** 2))}
