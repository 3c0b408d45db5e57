"""CLIP: the symmetric softmax contrastive loss (InfoNCE), with optional label smoothing.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision". For embeddings x, y [B, D] and learnable scale t (init 1/0.07), scores
S = t x @ y.T; row i's target is its own pair (or every row with its group id, or the K
captions of its image: losses/targets.py), uniform over the positives, mixed with the
uniform distribution over all columns by `label_smoothing` eps:

    q_i = (1 - eps) * positives_i / |positives_i| + eps / B
    L = 1/2 [ 1/B sum_i CE(q_i, softmax(S_i.)) + 1/B sum_j CE(q_.j, softmax(S_.j)) ]

(a direction's mean runs over its own rows: with K captions per image the text side is a
mean over the B*K captions).
"""

import jax.numpy as jnp

from xmodal.fields import Field
from xmodal.losses import engine, families, targets

FAMILY = families.SOFTMAX
INIT = (1 / 0.07, None)
FIELDS = dict(
    label_smoothing=Field(0.0, "mass moved from the positives to the uniform distribution "
                          "over all columns", ge=0, lt=1),
)
EXAMPLE = dict(label_smoothing=0.1)


def contrast(opts, pair=None, weight_fn=targets.same_id) -> engine.Contrast:
  eps = float(opts.label_smoothing)

  def score(theta, rf, cf, rm, cm):
    return theta["scale"] * targets.dot(rf, cf)

  def target(theta, rm, cm):
    w = weight_fn(rm["ids"], cm["ids"])
    comps = [families.Target(1.0 - eps, w=w)]
    if eps:
      comps.append(families.Target(eps, w=jnp.ones_like(w)))
    return {"row": comps, "col": comps}

  return engine.Contrast(FAMILY, score, target)


def blocks(opts, ctx, a, b):
  rows, cols = targets.pair_blocks(ctx, a, b)
  return rows, cols, {}
