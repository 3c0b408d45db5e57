"""Uniformity (a regulariser): how evenly one tower's embeddings cover the hypersphere.

Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere". For each tower of the group (or pair) with unit embeddings
x [B, D] and t = 2 (the paper's default), per row i:

    L_unif = 1/B sum_i log( 1/(B-1) sum_(j != i) exp(-t || x_i - x_j ||^2) )
           = 1/B sum_i [ lse_(j != i) 2t x_i . x_j ] - 2t - log(B - 1)

averaged over the towers. The per-row normaliser (as in DHEL's uniformity) is what lets
the ring stream it at any batch; by Jensen it is at most the paper's batch-level
log-mean over all pairs (evaluate/geometry.py's metric), and both are minimised by the
same uniform spread. Each tower is a driver call (rows = columns = its embeddings, itself
excluded) of the cross-entropy against the uniform target over the other rows, plus the
target's mean score added back locally (from the tower's batch sum).
"""

import jax.numpy as jnp

from xmodal.fields import Field
from xmodal.losses import engine, families, groups, targets
from xmodal.losses.objectives import mv_infonce

FAMILY = families.SOFTMAX
GROUP = True
MIN_TOWERS = 1          # a group of one tower: 'pairs=("image",)'
INIT = (1 / 0.07, None)       # reads no learnable scalar; this keeps a shared scale's init
FIELDS = dict(
    t=Field(2.0, "the Gaussian potential's inverse width", gt=0),
)
EXAMPLE = dict(pairs=("x:y:z",))


def contrast(opts, pair=None) -> engine.Contrast:
  t = float(opts.t)

  def score(theta, rf, cf, rm, cm):
    me = rm["idx"][:, None] == cm["idx"][None, :]
    return jnp.where(me, mv_infonce.SELF, 2 * t * targets.dot(rf, cf))

  def target(theta, rm, cm):
    w = (rm["idx"][:, None] != cm["idx"][None, :]).astype(jnp.float32)
    return {"row": [families.Target(1.0, w=w)], "col": []}

  return engine.Contrast(FAMILY, score, target, directions=("row",), weights=(1.0, 0.0))


def blocks(opts, ctx, *towers):
  groups.check_towers(ctx.emb, towers, "uniformity")
  t = float(opts.t)
  n = ctx.emb[towers[0]].shape[0]
  idx = jnp.arange(n, dtype=jnp.int32)
  parts = [groups.Part({"feat": ctx.emb[m], "meta": {"idx": idx}},
                       {"feat": ctx.emb[m], "meta": {"idx": idx}}, weight=1.0 / len(towers),
                       label=m) for m in towers]

  def local(theta):
    out = 0.0
    for m in towers:
      x = ctx.emb[m]
      mean_others = 2 * t * (x @ jnp.sum(x, axis=0) - jnp.sum(x * x, axis=-1)) / (n - 1)
      out = out + jnp.mean(mean_others) / len(towers)
    return out - 2 * t - jnp.log(n - 1.0)

  return groups.Parts(parts, local)
