"""Mixup contrastive (M3Co, MixCo): mixed rows with two nonzero targets each.

One tower's rows are mixed within the device shard. Kumar, Singhal et al. 2024, "Harnessing Shared Relations via Multimodal Mixup Contrastive
Learning for Multimodal Classification" (M3CoL), after MixCo (Kim et al. 2020). Row i of
the mixed tower is x~_i = unit(lam_i x_i + (1 - lam_i) x_p(i)) with p a random permutation
of the rows of the device's shard (mixing moves no data between devices) and
lam_i ~ Beta(beta, beta) for a random fraction `prob` of the rows (1 for the others). With
S = t x~ @ y.T (CLIP's learnable scale) and the mixing matrix P = diag(lam) +
[j = p(i)] (1 - lam_i):

    L = 1/2 [ mean_i sum_j P_ij (lse_j S_i. - S_ij) + mean_j sum_i P_ij (lse_i S_.j - S_ij) ]

The rows of P sum to 1; its columns sum to lam_j + 1 - lam_p^-1(j) and are used as they
are, as in the paper's loss. Defaults: beta 0.15, prob 0.5 (the paper's). With every lam = 1
(`fixed=1`) it is CLIP. Where p(i) = i both of row i's targets fall on column i (MixCo's
code overwrites the first with the second there).
"""

import jax
import jax.numpy as jnp

from xmodal.fields import ConfigError, Field
from xmodal.losses import engine, families, targets

FAMILY = families.SOFTMAX
SHARD_DRAWS = True      # random draws per device shard: the loss depends on the shard count
INIT = (1 / 0.07, None)
FIELDS = dict(
    side=Field("a", "which tower of the pair is mixed: 'a' or 'b'", choices=("a", "b")),
    beta=Field(0.15, "mixing weights lam ~ Beta(beta, beta)", gt=0),
    prob=Field(0.5, "fraction of rows mixed (the others keep lam = 1)", ge=0, le=1),
    fixed=Field(0.0, "a fixed lam for every mixed row instead of Beta draws; 0 = draw",
                ge=0, le=1),
)
EXAMPLE = dict(prob=1.0, fixed=0.3)    # (Beta draws compile slowly; test_objective_mixup draws them)


def check(opts, config, where):
  if config.data.captions == "k":
    raise ConfigError(f"config.{where}objective: mixup mixes one row per example; not with "
                      f"data.captions='k'")


def contrast(opts, pair=None) -> engine.Contrast:
  def score(theta, rf, cf, rm, cm):
    return theta["scale"] * targets.dot(rf, cf)

  def target(theta, rm, cm):
    own = targets.same_id(rm["ids"], cm["ids"])
    cross = targets.same_id(rm["link"], cm["link"])
    return {"row": [families.Target(rm["own"], w=own), families.Target(rm["cross"], w=cross)],
            "col": [families.Target(cm["own"], w=own), families.Target(cm["cross"], w=cross)]}

  return engine.Contrast(FAMILY, score, target)


def draw(opts, rng, batch, shards):
  """(partner [B] global row index within each shard, lam [B]) for one step."""
  if rng is None:
    raise ValueError("mixup: the objective needs a random key (extras['rng'])")
  b = batch // shards
  k_perm, k_lam, k_sel = jax.random.split(rng, 3)
  local = jax.vmap(lambda k: jax.random.permutation(k, b))(jax.random.split(k_perm, shards))
  partner = (local + (jnp.arange(shards) * b)[:, None]).reshape(batch)
  lam = (jnp.full((batch,), opts.fixed, jnp.float32) if opts.fixed else
         jax.random.beta(k_lam, opts.beta, opts.beta, (batch,)))
  lam = jnp.where(jax.random.uniform(k_sel, (batch,)) < opts.prob, lam, 1.0)
  return partner, lam


def _within_shards(values, index, shards):
  """values[index] for an index that stays within each shard: gathered shard by shard."""
  n = values.shape[0]
  b = n // shards
  v = values.reshape((shards, b) + values.shape[1:])
  i = (index.reshape(shards, b) - (jnp.arange(shards) * b)[:, None])
  i = i.reshape(i.shape + (1,) * (values.ndim - 1))
  return jnp.take_along_axis(v, i, axis=1).reshape(values.shape)


def blocks(opts, ctx, a, b):
  mixed_name, other_name = (a, b) if opts.side == "a" else (b, a)
  z = ctx.emb[mixed_name]
  batch = z.shape[0]
  partner, lam = draw(opts, ctx.rng, batch, ctx.shards)
  mixed = targets.unit(lam[:, None] * z + (1 - lam[:, None]) * _within_shards(z, partner,
                                                                              ctx.shards))
  inverse = jnp.zeros((batch,), jnp.int32).at[partner].set(jnp.arange(batch, dtype=jnp.int32))
  ids = ctx.ids
  mixed_block = {"feat": mixed, "meta": {
      "ids": ids, "link": _within_shards(ids, partner, ctx.shards), "own": lam,
      "cross": 1.0 - lam}}
  other_block = {"feat": ctx.emb[other_name], "meta": {
      "ids": ids, "link": ids, "own": lam,
      "cross": 1.0 - _within_shards(lam, inverse, ctx.shards)}}
  mixed_block["meta"] = targets.stop(mixed_block["meta"])
  other_block["meta"] = targets.stop(other_block["meta"])
  if opts.side == "a":
    return mixed_block, other_block, {}
  return other_block, mixed_block, {}
