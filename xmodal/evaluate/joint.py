"""Joint retrieval for objectives that score more than two modalities at once (Symile,
GRAM): retrieve one modality's row from the others' rows together, with the objective's
own score instead of pairwise cosines.

For a group of towers and a target tower m, query i is (the other towers' rows of sample
i) and the gallery is m's rows; the score of candidate j is
  symile  <o1_i, o2_i, ..., m_j>  (the multilinear inner product)
  gram    -vol(m_j, o1_i, o2_i, ...)  (the Gram volume, objectives/gram.py)
Recall@K is the fraction of queries whose own sample's row ranks in the top K (ties count
against). Logged as "joint/<term>/<others>_to_<m>/R<k>" (the evaluation task "joint",
evaluate/kinds/joint.py; others joined by "-") for every target tower of the group.
"""

import numpy as np

from xmodal.losses import terms as terms_lib

JOINT = ("symile", "gram")


def scores(objective: str, others, target):
  """others: list of [N, D] (the query sides), target [N, D] (the gallery) -> [N, N]."""
  if objective == "symile":
    prod = others[0]
    for o in others[1:]:
      prod = prod * o
    return prod @ target.T
  import jax.numpy as jnp   # noqa: PLC0415
  from xmodal.losses.objectives import gram   # noqa: PLC0415
  vol = gram.volume(jnp.asarray(target), jnp.asarray(np.stack(others, 1)), 0.0)  # [gallery, query]
  return -np.asarray(vol, np.float64).T


def recall(s, ks=(1, 5, 10)) -> dict:
  true = np.diag(s)
  rank = (s > true[:, None]).sum(axis=1) + (s == true[:, None]).sum(axis=1) - 1
  return {f"R{k}": float(np.mean(rank < k)) for k in ks}


def towers(config) -> list[str]:
  """The towers of every Symile / GRAM group of three or more (what `metrics` reads)."""
  if not config.loss.get("terms") and config.loss.name not in JOINT:
    return []
  out = []
  for term in terms_lib.resolve(config):
    if term.objective in JOINT:
      out += [t for group in term.pairs if len(group) >= 3 for t in group if t not in out]
  return out


def metrics(config, z, params=None) -> dict:
  """{"<term>/<others>_to_<m>/R<k>": ...} for every Symile / GRAM term's groups of three
  or more towers (with two, joint retrieval is the pairwise retrieval already logged)."""
  if not config.loss.get("terms"):
    if config.loss.name not in JOINT:
      return {}
  out = {}
  for term in terms_lib.resolve(config):
    if term.objective not in JOINT:
      continue
    for group in term.pairs:
      if len(group) < 3:
        continue
      for m in group:
        others = [np.asarray(z[t], np.float64) for t in group if t != m]
        r = recall(scores(term.objective, others, np.asarray(z[m], np.float64)))
        name = "-".join(t for t in group if t != m)
        out.update({f"{term.name}/{name}_to_{m}/{k}": v for k, v in r.items()})
  return out
