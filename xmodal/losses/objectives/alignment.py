"""Alignment (a regulariser): the mean distance between a sample's embeddings in two towers.

Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere". For unit embeddings a, b [B, D] of the towers of a pair
(or of every pair within a group 'a:b:c'):

    L_align = 1/B sum_i || a_i - b_i ||^alpha        (alpha = 2, the paper's default)

No column of another device is read (each sample's own rows): every driver computes it where
the rows live. Use it weighted beside a contrastive term, e.g. `softmax + 0.1*alignment`
(with `uniformity`, the paper's L_align + lam L_uniform).
"""

import jax.numpy as jnp

from xmodal.fields import Field
from xmodal.losses import groups
from xmodal.losses.objectives import softmax

FAMILY = softmax.FAMILY
GROUP = True
INIT = softmax.INIT           # reads no learnable scalar; this keeps a shared scale's init
FIELDS = dict(
    alpha=Field(2.0, "the power of the distance", gt=0),
)
EXAMPLE = dict(pairs=("x:y:z",))


def contrast(opts, pair=None):
  return softmax.contrast(softmax_defaults(), pair)   # no driver call: `blocks` has no parts


def softmax_defaults():
  from xmodal.losses import objectives   # noqa: PLC0415
  return objectives.default_options("softmax")


def value(a, b, alpha):
  d2 = jnp.sum((a - b) ** 2, axis=-1)
  # the power through where: its gradient at distance 0 is 0, not nan (alpha = 2 is exact)
  return jnp.mean(d2 if alpha == 2 else jnp.where(d2 > 0, jnp.maximum(d2, 1e-30) ** (alpha / 2),
                                                  0.0))


def blocks(opts, ctx, *towers):
  groups.check_towers(ctx.emb, towers, "alignment")
  pairs = [(a, b) for i, a in enumerate(towers) for b in towers[i + 1:]]

  def local(theta):
    return sum(value(ctx.emb[a], ctx.emb[b], float(opts.alpha)) for a, b in pairs) / len(pairs)

  return groups.Parts([], local)
