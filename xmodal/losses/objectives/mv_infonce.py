"""MV-InfoNCE: one InfoNCE term per view over all M views (modalities) of a sample.

Koromilas et al. 2025, "A Principled Framework for Multi-View Contrastive Learning". For M
towers (views) with unit embeddings u_i^l [B, D] and scale t (1/tau; init 1/0.2, the
paper's tau), every embedding r = (i, l) is scored against every other embedding s = (j, m)
of the batch, S_rs = t u_i^l . u_j^m, and its positive mass is that of all pairs of its
own sample's views:

    L = 1/(B M) sum_(i,l) [ log sum_((j,m) != (i,l)) exp S_(i,l),(j,m)
                            - log sum_(l' != m') exp S_(i,l'),(i,m') ]

Driven as the multi-positive cross-entropy over the B*M embeddings (rows = columns, each
sample's views adjacent so a device holds its samples' views; itself excluded), whose
target is uniform over the row's own sample's other views, plus the local difference
between that target's mean score and the positives' log-sum-exp (a per-sample quantity,
no other device's rows). Invariant to permuting the views. With M = 2 it is SimCLR's
NT-Xent over the 2B embeddings minus log 2 (the positive pair counts in both orders).
"""

import jax.numpy as jnp
from jax import nn

from xmodal.losses import engine, families, groups, targets

FAMILY = families.SOFTMAX
GROUP = True
INIT = (1 / 0.2, None)
FIELDS = {}
EXAMPLE = dict(pairs=("x:y:z",))
SELF = -1e30          # a row's score against itself: out of every normaliser


def check(opts, config, where):
  groups.check_one_row("mv_infonce", opts, config, where)


def contrast(opts, pair=None) -> engine.Contrast:
  def score(theta, rf, cf, rm, cm):
    me = rm["idx"][:, None] == cm["idx"][None, :]
    return jnp.where(me, SELF, theta["scale"] * targets.dot(rf, cf))

  def target(theta, rm, cm):
    w = targets.same_id(rm["ids"], cm["ids"]) * (rm["idx"][:, None] != cm["idx"][None, :])
    return {"row": [families.Target(1.0, w=w)], "col": []}

  return engine.Contrast(FAMILY, score, target, directions=("row",), weights=(1.0, 0.0))


def stack_views(ctx, towers):
  """[B, M, D]: each sample's views side by side."""
  groups.check_towers(ctx.emb, towers, "multi-view objective")
  return jnp.stack([ctx.emb[t] for t in towers], axis=1)


def pair_scores(u, scale):
  """[B, M, M] scores of every pair of a sample's views."""
  return scale * jnp.einsum("bld,bmd->blm", u, u)


def blocks(opts, ctx, *towers):
  u = stack_views(ctx, towers)
  b, m, d = u.shape
  flat = u.reshape(b * m, d)
  meta = {"ids": jnp.repeat(jnp.arange(b, dtype=jnp.int32), m, total_repeat_length=b * m),
          "idx": jnp.arange(b * m, dtype=jnp.int32)}
  block = {"feat": flat, "meta": meta}
  off = ~jnp.eye(m, dtype=bool)

  def local(theta):
    s = pair_scores(u, theta["scale"])                                     # [B, M, M]
    mean_pos = jnp.sum(jnp.where(off, s, 0.0), axis=2) / (m - 1)           # [B, M]
    lse_pos = nn.logsumexp(jnp.where(off, s, -jnp.inf), axis=(1, 2))       # [B]
    return jnp.mean(mean_pos - lse_pos[:, None])

  return groups.Parts([groups.Part(block, block)], local)
