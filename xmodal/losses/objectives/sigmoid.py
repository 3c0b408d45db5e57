"""SigLIP: the pairwise sigmoid loss, with optional label smoothing.

Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training". For embeddings x, y
[B, D], learnable scale t (init 10) and bias b (init -10), every pair (i, j) is a binary
problem with label w_ij = 1 for positives (its own pair, equal group ids, the K captions
of its image), 0 otherwise, smoothed to (1 - eps) w + eps / 2:

    L = 1/B sum_ij [ -w_ij log sigmoid(t x_i.y_j + b) - (1 - w_ij) log sigmoid(-(t x_i.y_j + b)) ]

Each pair's term is computed by its own (families.sigmoid_terms): no every-pair-negative-
then-correct-the-positives cancellation, so it is exact when positives are confident.
"""

from xmodal.fields import Field
from xmodal.losses import engine, families, targets

FAMILY = families.SIGMOID
INIT = (10.0, -10.0)
FIELDS = dict(
    label_smoothing=Field(0.0, "labels (1 - eps) w + eps / 2", ge=0, lt=1),
)
EXAMPLE = dict(label_smoothing=0.1)


def contrast(opts, pair=None, weight_fn=targets.same_id) -> engine.Contrast:
  eps = float(opts.label_smoothing)

  def score(theta, rf, cf, rm, cm):
    return theta["scale"] * targets.dot(rf, cf) + theta["bias"]

  def target(theta, rm, cm):
    w = weight_fn(rm["ids"], cm["ids"])
    return {"pair": (1.0 - eps) * w + eps / 2 if eps else w}

  return engine.Contrast(FAMILY, score, target)


def blocks(opts, ctx, a, b):
  rows, cols = targets.pair_blocks(ctx, a, b)
  return rows, cols, {}
