"""Symile: contrast the multilinear inner product (MIP) of three or more modalities.

Saporta et al. 2024, "Contrasting with Symile: Simple Model-Agnostic Representation
Learning for Unlimited Modalities". For M towers with unit embeddings z^1..z^M [B, D] and
learnable scale t (init 1/0.07), the MIP of one row from each modality is
<a, b, c, ...> = sum_d a_d b_d c_d ... . With modality m as the anchor, row i's positive is
its own sample's MIP and its negatives are MIPs of z^m_i with the other modalities' rows of
other samples; the O(N) negative sampling of the paper: the first other modality keeps its
rows, each further one is permuted (a permutation per modality, within each device's
shard, so no row moves between devices):

    S^m_ij = t <z^m_i, z^o1_i, z^o2_i, ...>                     j = i   (the positive, local)
           = t <z^m_i, z^o1_j, z^o2_p2(j), z^o3_p3(j), ...>     j != i
    L = 1/M sum_m 1/B sum_i CE(onehot_i, softmax_j S^m_i.)      (anchors take turns)

With M = 2 there is nothing to permute and S^m is CLIP's score in one direction: Symile is
CLIP. A column's feature is the elementwise product of the others' rows, so the ring and
gathered drivers score it like a CLIP column (one matmul per tile); the positive MIP is a
per-row number computed where the row lives. Option `anchor`: one tower as the only
anchor instead of every tower in turn. Zero-shot: rank candidates of one modality by the
MIP with the others' rows (xmodal/evaluate/joint.py).
"""

import jax
import jax.numpy as jnp

from xmodal.fields import Field
from xmodal.losses import engine, families, groups, targets

FAMILY = families.SOFTMAX
GROUP = True
SHARD_DRAWS = True      # random draws per device shard: the loss depends on the shard count
INIT = (1 / 0.07, None)
FIELDS = dict(
    anchor=Field("", "the only anchor tower; '' = every tower of the group in turn"),
)
EXAMPLE = dict(pairs=("x:y:z",))


def check(opts, config, where):
  groups.check_one_row("symile", opts, config, where)


def score(theta, rf, cf, rm, cm):
  """rf {"a": anchor rows [r, D], "pos": their positive MIP [r]}; cf {"neg": products of
  the other modalities' (permuted) rows [c, D]} -> [r, c]."""
  neg = targets.dot(rf["a"], cf["neg"])
  own = rm["idx"][:, None] == cm["idx"][None, :]
  return theta["scale"] * jnp.where(own, rf["pos"][:, None], neg)


def contrast(opts, pair=None) -> engine.Contrast:
  def target(theta, rm, cm):
    return {"row": [families.Target(1.0, w=targets.same_id(rm["idx"], cm["idx"]))],
            "col": []}
  return engine.Contrast(FAMILY, score, target, directions=("row",), weights=(1.0, 0.0))


def negatives(others, rng, shards):
  """The elementwise product of the other modalities' rows, all but the first permuted
  within each shard: [B, D]."""
  n = others[0].shape[0]
  prod = others[0]
  keys = jax.random.split(rng, max(len(others) - 1, 1))
  for z, k in zip(others[1:], keys):
    prod = prod * groups.within_shards(z, groups.permutation_within_shards(k, n, shards),
                                       shards)
  return prod


def positives(anchor, others):
  prod = anchor
  for z in others:
    prod = prod * z
  return jnp.sum(prod, axis=-1)


def blocks(opts, ctx, *towers):
  groups.check_towers(ctx.emb, towers, "symile")
  if len(towers) > 2 and ctx.rng is None:
    raise ValueError("symile: the objective needs a random key (extras['rng']) to sample "
                     "negatives")
  anchors = (opts.anchor,) if opts.anchor else towers
  n = ctx.emb[towers[0]].shape[0]
  idx = jnp.arange(n, dtype=jnp.int32)
  parts = []
  for i, m in enumerate(anchors):
    others = [ctx.emb[t] for t in towers if t != m]
    rng = None if ctx.rng is None else jax.random.fold_in(ctx.rng, i)
    neg = negatives(others, rng, ctx.shards) if len(others) > 1 else others[0]
    rows = {"feat": {"a": ctx.emb[m], "pos": positives(ctx.emb[m], others)},
            "meta": {"idx": idx}}
    cols = {"feat": {"neg": neg}, "meta": {"idx": idx}}
    parts.append(groups.Part(rows, cols, weight=1.0 / len(anchors), label=f"anchor_{m}"))
  return groups.Parts(parts)
