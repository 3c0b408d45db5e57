"""GRAM: contrast the volume of the parallelotope an anchor spans with the other modalities.

Cicchetti et al. 2025, "Gramian Multimodal Representation Learning and Alignment" (ICLR).
For k towers with unit embeddings, the anchor a (the first tower of the group, or
`anchor`) and the others o^1..o^(k-1) [B, D], the volume spanned by (a_i, o^1_j, ...,
o^(k-1)_j) is sqrt(det G) with G their Gram matrix. With C_j the (k-1) x (k-1) Gram matrix
of sample j's other modalities (a per-column constant) and u_ij = (a_i . o^m_j)_m (k-1
matmuls), the cofactor expansion along the anchor's row gives

    det G_ij = det C_j - u_ij^T adj(C_j) u_ij           (a_i . a_i = 1)
    vol_ij = sqrt(max(det G_ij, 0) + eps)               (eps: where the square root meets 0,
                                                         its gradient is finite)
    S_ij = -t vol_ij                                    (learnable t, init 1/0.07)
    L = 1/2 [ 1/B sum_i CE(q_i, softmax_j S_i.) + 1/B sum_j CE(q_.j, softmax_i S_.j) ]

with label smoothing 0.1 (q = 0.9 one-hot + 0.1 uniform: the paper's data-to-anchor and
anchor-to-data losses). For k = 2, vol = sqrt(1 - cos^2) = |sin theta|: GRAM with two
modalities is not CLIP (antipodal rows have volume 0, like a positive). The paper's
optional data-text matching head is not part of this objective.
"""

import jax.numpy as jnp

from xmodal.fields import Field
from xmodal.losses import engine, families, groups, targets

FAMILY = families.SOFTMAX
GROUP = True
INIT = (1 / 0.07, None)
FIELDS = dict(
    anchor=Field("", "the anchor tower; '' = the group's first tower"),
    label_smoothing=Field(0.1, "mass moved from the positive to the uniform distribution",
                          ge=0, lt=1),
    eps=Field(1e-8, "added under the volume's square root (a finite gradient at 0)", ge=0),
)
EXAMPLE = dict(pairs=("x:y:z",))


def check(opts, config, where):
  groups.check_one_row("gram", opts, config, where)


def _minor(c, i, j):
  return jnp.delete(jnp.delete(c, i, axis=-2), j, axis=-1)


def det(c):
  """det C [...] of small matrices [..., m, m] by Laplace expansion along the first row: a
  polynomial, so its gradient is defined where C is singular (jnp.linalg.det's is not)."""
  m = c.shape[-1]
  if m == 1:
    return c[..., 0, 0]
  return sum((-1) ** j * c[..., 0, j] * det(_minor(c, 0, j)) for j in range(m))


def adjugate(c):
  """adj(C) [..., m, m]: the transposed cofactors (defined where C is singular)."""
  m = c.shape[-1]
  if m == 1:
    return jnp.ones_like(c)
  return jnp.stack([jnp.stack([(-1) ** (i + j) * det(_minor(c, j, i)) for j in range(m)], -1)
                    for i in range(m)], -2)


def gram_det(a, others):
  """det G_ij [r, c] of anchors a [r, D] (unit) against columns' others [c, k-1, D]."""
  u = jnp.stack([targets.dot(a, others[:, m]) for m in range(others.shape[1])], -1)
  c = jnp.einsum("jmd,jnd->jmn", others, others)                    # per-column constants
  adj, det_c = adjugate(c), det(c)
  quad = jnp.einsum("ijm,jmn,ijn->ij", u, adj, u)
  return det_c[None, :] - quad


def volume(a, others, eps):
  return jnp.sqrt(jnp.maximum(gram_det(a, others), 0.0) + eps)


def contrast(opts, pair=None) -> engine.Contrast:
  eps = float(opts.label_smoothing)
  root_eps = float(opts.eps)

  def score(theta, rf, cf, rm, cm):
    return -theta["scale"] * volume(rf, cf, root_eps)

  def target(theta, rm, cm):
    w = targets.same_id(rm["idx"], cm["idx"])
    comps = [families.Target(1.0 - eps, w=w)]
    if eps:
      comps.append(families.Target(eps, w=jnp.ones_like(w)))
    return {"row": comps, "col": comps}

  return engine.Contrast(FAMILY, score, target)


def blocks(opts, ctx, *towers):
  groups.check_towers(ctx.emb, towers, "gram")
  anchor = opts.anchor or towers[0]
  n = ctx.emb[towers[0]].shape[0]
  idx = jnp.arange(n, dtype=jnp.int32)
  others = jnp.stack([ctx.emb[t] for t in towers if t != anchor], axis=1)
  rows = {"feat": ctx.emb[anchor], "meta": {"idx": idx}}
  cols = {"feat": others, "meta": {"idx": idx}}
  return groups.Parts([groups.Part(rows, cols)])
