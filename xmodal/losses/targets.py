"""Building blocks objectives share: scores of unit embeddings, targets from ids, and the
row / column blocks of a pair of towers.

Ids. Every row of a block carries an int id in meta["ids"]; the default target of row i is
every column with the same id. Ids are the example's global index in the batch (its only
positive is its own pair), or the batch's group ids (`config_lib.group_positives`: rows
with equal ids are positives of each other, several captions of one record), or, when a
tower embeds K inputs per example ([B, K, D]: several captions per image without repeating
the image, 1-to-K), the owning example's id repeated K times. Extra columns that must never
be positives (a feature queue) carry id -1.

`dense_loss_with_ids` and `same_id` keep the older entry points (group ids, a symmetric
`weight_fn(row_ids, col_ids)` of soft targets) working on the engine.
"""

import jax
import jax.numpy as jnp
from jax import lax

NO_ID = -1        # never equal to a row's id (ids are >= 0)


def dot(a, b):
  """a [r, D] . b [c, D] -> float32 [r, c] (float32 accumulation for bf16 inputs)."""
  return lax.dot_general(a, b, (((a.ndim - 1,), (b.ndim - 1,)), ((), ())),
                         preferred_element_type=jnp.float32)


def same_id(row_ids, col_ids):
  """1 where the ids are equal, else 0 -> float32 [r, c]."""
  return (row_ids[:, None] == col_ids[None, :]).astype(jnp.float32)


def flatten_k(z, ids):
  """A tower's embeddings [B, D] with ids [B], or [B, K, D] (K inputs per example) -> rows
  [B*K, D] and their ids [B*K] (each row owned by its example)."""
  if z.ndim == 2:
    return z, ids
  b, k = z.shape[:2]
  return z.reshape((b * k,) + z.shape[2:]), jnp.repeat(ids, k, total_repeat_length=b * k)


def per_row(value, z):
  """Per-example metadata [B, ...] repeated to the rows of a flattened [B, K, D] tower."""
  if z.ndim == 2:
    return value
  k = z.shape[1]
  return jnp.repeat(value, k, axis=0, total_repeat_length=value.shape[0] * k)


def pair_blocks(ctx, a: str, b: str, meta_a=None, meta_b=None):
  """Rows from tower a, columns from tower b: {"feat": embeddings, "meta": {"ids", ...}};
  `meta_a` / `meta_b`: more per-example metadata [B, ...] for each side."""
  out = []
  for name, meta in ((a, meta_a), (b, meta_b)):
    z = ctx.emb[name]
    feat, ids = flatten_k(z, ctx.ids)
    extra = {k: per_row(v, z) for k, v in (meta or {}).items()}
    out.append({"feat": feat, "meta": {"ids": ids, **extra}})
  return tuple(out)


def unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def dense_loss_with_ids(name: str, x, y, scale, bias=0.0, ids=None, weight_fn=same_id):
  """x, y [B, D] on one device with ids [B] (None = arange) -> scalar mean loss of the
  `softmax` or `sigmoid` objective, rows with equal ids (or `weight_fn(row_ids, col_ids)`,
  symmetric, in [0, 1]) being positives."""
  from xmodal.losses import engine, objectives   # noqa: PLC0415 (objectives import this)
  ids = jnp.arange(x.shape[0]) if ids is None else jnp.asarray(ids)
  contrast = objectives.get(name).contrast(objectives.default_options(name),
                                           weight_fn=weight_fn)
  theta = {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
  rows = {"feat": x, "meta": {"ids": ids}}
  cols = {"feat": y, "meta": {"ids": ids}}
  return engine.dense(contrast, theta, rows, cols)


def stop(tree):
  return jax.tree.map(lax.stop_gradient, tree)
