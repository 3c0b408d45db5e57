"""FILIP: token-wise late interaction (mean over one side's tokens of the max over the other's).

Yao et al. 2022, "FILIP: Fine-grained Interactive Language-Image Pre-Training". Towers
return token features beside the pooled embedding (towers.<name>.tokens; the model adds
"<name>:tokens" [B, T, D] unit rows and "<name>:mask" [B, T] to the embeddings). For
example i of tower a and j of tower b, with valid tokens P_i and Q_j and learnable scale t
(init 1/0.07):

    s^a_ij = 1/|P_i| sum_(p in P_i) max_(q in Q_j) x_ip . y_jq       (a -> b)
    s^b_ij = 1/|Q_j| sum_(q in Q_j) max_(p in P_i) x_ip . y_jq       (b -> a)
    L = 1/2 [ 1/B sum_i CE(onehot_i, softmax_j t s^a_i.)
              + 1/B sum_j CE(onehot_j, softmax_i t s^b_.j) ]

Padding tokens are in no max and no mean. A tile of columns holds whole examples, so each
tile's max-then-mean is complete: the ring and gathered drivers stream it like any score
(memory [b, tile, T_a, T_b] per tile). To bound the gathered payload: `keep` tokens per
example (FILIP's choice: those with the highest max similarity to the other tower's tokens
within the device's shard, 'local_max', or a random subset, 'random'), and a small token
dimension (towers.<name>.token_dim: the tower's own token head). With one token per side
it is CLIP.
"""

import jax
import jax.numpy as jnp

from xmodal.fields import ConfigError, Field
from xmodal.losses import engine, families, targets

FAMILY = families.SOFTMAX
TOKENS = True
SHARD_DRAWS = True      # `keep` selects within each device's shard
INIT = (1 / 0.07, None)
FIELDS = dict(
    keep=Field(0, "token features kept per example (0 = all)", ge=0),
    select=Field("local_max", "which tokens `keep` keeps: 'local_max' (highest max "
                 "similarity to the other tower's tokens within the device's shard, the "
                 "paper's) or 'random'", choices=("local_max", "random")),
)
EXAMPLE = dict(keep=3)
FAR = -1e9              # a padding token's similarity: never a max


def check(opts, config, where):
  if config.data.get("captions") == "k":
    raise ConfigError(f"config.{where}objective: filip scores one token sequence per "
                      f"example; not with data.captions='k'")


def token_scores(xt, xm, yt, ym):
  """x tokens [r, P, D] with mask [r, P], y tokens [c, Q, D] with mask [c, Q] ->
  (s_row [r, c]: mean over x's tokens of the max over y's, s_col [r, c]: the reverse)."""
  sim = jnp.einsum("ipd,jqd->ijpq", xt, yt, preferred_element_type=jnp.float32)
  xm, ym = xm.astype(bool), ym.astype(bool)
  best_y = jnp.max(jnp.where(ym[None, :, None, :], sim, FAR), axis=3)          # [r, c, P]
  best_x = jnp.max(jnp.where(xm[:, None, :, None], sim, FAR), axis=2)          # [r, c, Q]
  wx = xm.astype(jnp.float32)
  wy = ym.astype(jnp.float32)
  s_row = jnp.einsum("ijp,ip->ij", best_y, wx) / jnp.maximum(wx.sum(1), 1)[:, None]
  s_col = jnp.einsum("ijq,jq->ij", best_x, wy) / jnp.maximum(wy.sum(1), 1)[None, :]
  return s_row, s_col


def contrast(opts, pair=None, weight_fn=targets.same_id) -> engine.Contrast:
  def score(theta, rf, cf, rm, cm):
    s_row, s_col = token_scores(rf, rm["mask"], cf, cm["mask"])
    return theta["scale"] * s_row, theta["scale"] * s_col

  def target(theta, rm, cm):
    comps = [families.Target(1.0, w=weight_fn(rm["ids"], cm["ids"]))]
    return {"row": comps, "col": comps}

  return engine.Contrast(FAMILY, score, target)


def tokens_of(ctx, tower):
  key = f"{tower}:tokens"
  if key not in ctx.emb:
    raise ValueError(f"filip: tower {tower!r} returns no token features; set "
                     f"config.towers.{tower}.tokens=True")
  t = ctx.emb[key]
  mask = ctx.emb.get(f"{tower}:mask")
  return t, (jnp.ones(t.shape[:2], jnp.float32) if mask is None else mask)


def _per_shard(fn, shards, *arrays):
  """fn over each of `shards` equal blocks of rows (no row moves between devices)."""
  split = [a.reshape((shards, a.shape[0] // shards) + a.shape[1:]) for a in arrays]
  out = jax.vmap(fn)(*split)
  return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:]), out)


CHUNK = 64              # the other tower's rows per step of the local max: [b, T, 64, T']


def _local_max(xt, xm, yt, ym):
  """[b, T]: each x token's max similarity to the other tower's valid tokens of the shard,
  over chunks of its rows (memory [b, T, CHUNK, T'], not [b, T, b, T'])."""
  del xm
  n = yt.shape[0]
  c = min(CHUNK, n)
  pad = (-n) % c
  yt = jnp.pad(yt, ((0, pad), (0, 0), (0, 0))).reshape((-1, c) + yt.shape[1:])
  ym = jnp.pad(ym, ((0, pad), (0, 0))).reshape((-1, c, ym.shape[1]))   # padded rows: mask 0

  def step(best, chunk):
    t, m = chunk
    sim = jnp.einsum("ipd,jqd->ipjq", xt, t, preferred_element_type=jnp.float32)
    return jnp.maximum(best, jnp.max(jnp.where(m.astype(bool)[None, None], sim, FAR),
                                     axis=(2, 3))), None
  best, _ = jax.lax.scan(step, jnp.full(xt.shape[:2], FAR, jnp.float32), (yt, ym))
  return best


def select(opts, rng, shards, xt, xm, yt, ym):
  """(tokens [B, keep, D], mask [B, keep]) of x: the kept tokens of each example."""
  keep = int(opts.keep)
  if not keep or keep >= xt.shape[1]:
    return xt, xm
  if opts.select == "random":
    if rng is None:
      raise ValueError("filip: select='random' needs a random key (extras['rng'])")
    key = jax.random.uniform(rng, xm.shape)
  else:
    key = jax.lax.stop_gradient(_per_shard(_local_max, shards, xt, xm, yt, ym))
  key = jnp.where(xm.astype(bool), key, -jnp.inf)            # padding last
  _, idx = jax.lax.top_k(key, keep)
  return (jnp.take_along_axis(xt, idx[..., None], axis=1),
          jnp.take_along_axis(xm, idx, axis=1))


def blocks(opts, ctx, a, b):
  (xt, xm), (yt, ym) = tokens_of(ctx, a), tokens_of(ctx, b)
  ra, rb = (None, None) if ctx.rng is None else jax.random.split(ctx.rng)
  xs = select(opts, ra, ctx.shards, xt, xm, yt, ym)
  ys = select(opts, rb, ctx.shards, yt, ym, xt, xm)
  rows = {"feat": xs[0], "meta": {"ids": ctx.ids, "mask": targets.stop(xs[1])}}
  cols = {"feat": ys[0], "meta": {"ids": ctx.ids, "mask": targets.stop(ys[1])}}
  return rows, cols, {}
