"""MV-DHEL: multi-view decoupled hyperspherical energy loss.

Koromilas et al. 2025, "A Principled Framework for Multi-View Contrastive Learning". For M
towers (views) with unit embeddings u_i^l [B, D] and scale t (1/tau; init 1/0.2, the
paper's tau), alignment pulls together every pair of a sample's views and uniformity is
computed within each view only (decoupled from alignment):

    L = 1/B sum_i [ sum_l log sum_(j != i) exp(t u_i^l . u_j^l)
                    - log sum_(l < m) exp(t u_i^l . u_i^m) ]

Driven as M passes (one per view, rows = columns = that view's embeddings, itself
excluded), each the cross-entropy against the uniform target over the other samples,
plus a local part: that target's mean score (from the view's batch sum, O(B D)) minus the
log-sum-exp of the sample's own view pairs. Invariant to permuting the views. With M = 2
it is DHEL (decoupled, hyperspherical-energy InfoNCE with a uniformity term per view).
"""

import jax.numpy as jnp
from jax import nn

from xmodal.losses import engine, families, groups, targets
from xmodal.losses.objectives import mv_infonce

FAMILY = families.SOFTMAX
GROUP = True
INIT = (1 / 0.2, None)
FIELDS = {}
EXAMPLE = dict(pairs=("x:y:z",))


def check(opts, config, where):
  groups.check_one_row("mv_dhel", opts, config, where)


def contrast(opts, pair=None) -> engine.Contrast:
  def score(theta, rf, cf, rm, cm):
    me = rm["idx"][:, None] == cm["idx"][None, :]
    return jnp.where(me, mv_infonce.SELF, theta["scale"] * targets.dot(rf, cf))

  def target(theta, rm, cm):
    w = (rm["idx"][:, None] != cm["idx"][None, :]).astype(jnp.float32)
    return {"row": [families.Target(1.0, w=w)], "col": []}

  return engine.Contrast(FAMILY, score, target, directions=("row",), weights=(1.0, 0.0))


def blocks(opts, ctx, *towers):
  u = mv_infonce.stack_views(ctx, towers)
  b, m, _ = u.shape
  idx = jnp.arange(b, dtype=jnp.int32)
  parts = [groups.Part({"feat": u[:, l], "meta": {"idx": idx}},
                       {"feat": u[:, l], "meta": {"idx": idx}}, label=f"view_{t}")
           for l, t in enumerate(towers)]
  upper = jnp.triu(jnp.ones((m, m), bool), k=1)

  def local(theta):
    total = jnp.sum(u, axis=0)                                               # [M, D]
    # each row's mean score over the other samples of its view (the passes' target)
    mean_others = theta["scale"] * (jnp.einsum("bld,ld->bl", u, total)
                                         - jnp.sum(u * u, axis=-1)) / (b - 1)
    s = mv_infonce.pair_scores(u, theta["scale"])
    lse_pos = nn.logsumexp(jnp.where(upper, s, -jnp.inf), axis=(1, 2))
    return jnp.mean(jnp.sum(mean_others, axis=1) - lse_pos)

  return groups.Parts(parts, local)
