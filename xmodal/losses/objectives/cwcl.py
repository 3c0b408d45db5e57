"""CWCL: continuously weighted contrastive loss.

Srinivasa et al. 2023, "CWCL: Cross-Modal Transfer with Continuously Weighted Contrastive
Loss" (NeurIPS). Aligning a trainable modality to a frozen pre-trained one, the examples of
a batch are not all negatives of each other: row i's target spreads over every column j by
the intra-modal similarity of the frozen modality's embeddings u,

    w_ij = (1 + cos(u_i, u_j)) / 2,      q_ij = w_ij / sum_j w_ij,

in the direction whose rows are the frozen modality (the paper's U -> V); the other
direction is CLIP's (one-hot). Scores S = t x @ y.T with CLIP's learnable scale (init
1/0.07); L = 1/2 (mean_i CE(q_i., softmax(S_i.)) + mean_j CE(onehot_.j, softmax(S_.j))).
With w the identity it is CLIP.

Options: `reference`, the tower whose embeddings are u (required; freeze it: the frozen
tower of the pair, or a third frozen tower on the same inputs), and `soft`, the direction
with the soft targets: 'reference' (rows of the reference's modality, as in the paper; the
reference must be in the pair), 'a' (rows of the pair's first tower), 'b' or 'both'.
"""

from xmodal.fields import ConfigError, Field
from xmodal.losses import engine, families, targets

FAMILY = families.SOFTMAX
INIT = (1 / 0.07, None)
FIELDS = dict(
    reference=Field("", "tower whose embeddings u give w_ij = (1 + cos(u_i, u_j)) / 2 "
                    "(frozen: the pre-trained tower of the pair, or a third one)"),
    soft=Field("reference", "direction with the soft targets: 'reference' (rows of the "
               "reference's modality, the paper's), 'a', 'b' or 'both'",
               choices=("reference", "a", "b", "both")),
)
EXAMPLE = dict(reference="ref", soft="a")


def weights(u_rows, u_cols):
  """(1 + cos(u_i, u_j)) / 2 for unit u: [r, c] in [0, 1]."""
  return 0.5 * (1.0 + targets.dot(u_rows, u_cols))


def needs(opts, a, b):
  return {"towers": (opts.reference,) if opts.reference else ()}


def check(opts, config, where):
  if not opts.reference:
    raise ConfigError(f"config.{where}reference: required for the cwcl objective: the frozen "
                      f"tower whose embeddings weigh the targets, one of "
                      f"{sorted(config.towers.keys())}")
  if opts.reference not in config.towers:
    raise ConfigError(f"config.{where}reference: {opts.reference!r} is not a tower "
                      f"({sorted(config.towers.keys())})")


def _side(opts, pair):
  if opts.soft != "reference":
    return opts.soft
  if pair is not None and opts.reference not in pair:
    raise ConfigError(f"cwcl: soft='reference' but the reference {opts.reference!r} is not in "
                      f"the pair {':'.join(pair)}; set soft to 'a', 'b' or 'both'")
  return "a" if pair is None or opts.reference == pair[0] else "b"


def contrast(opts, pair=None, weight_fn=weights) -> engine.Contrast:
  side = _side(opts, pair)

  def score(theta, rf, cf, rm, cm):
    return theta["scale"] * targets.dot(rf, cf)

  def target(theta, rm, cm):
    one = targets.same_id(rm["ids"], cm["ids"])
    soft = weight_fn(rm["ref"], cm["ref"])
    return {"row": [families.Target(1.0, w=soft if side in ("a", "both") else one)],
            "col": [families.Target(1.0, w=soft if side in ("b", "both") else one)]}

  return engine.Contrast(FAMILY, score, target)


def blocks(opts, ctx, a, b):
  u = targets.stop(targets.unit(ctx.emb[opts.reference]))
  rows, cols = targets.pair_blocks(ctx, a, b, meta_a={"ref": u}, meta_b={"ref": u})
  return rows, cols, {}
