"""Shared pieces of the objective tests: a Context of random embeddings, one objective's
dense loss from it, and float64 numpy helpers for brute-force references."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal import losses
from xmodal.losses import engine, objectives, terms
from tiny import make_tiny_config


def unit(key, shape):
  x = jax.random.normal(key, shape)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def context(emb, ids=None, batch=None, ema=None, rng=None, step=0, shards=1):
  b = next(iter(emb.values())).shape[0]
  return losses.Context(emb=emb, ids=jnp.arange(b, dtype=jnp.int32) if ids is None else ids,
                        batch=batch or {}, ema=ema or {}, rng=rng,
                        step=jnp.int32(step), shards=shards)


def options(name, **overrides):
  opts = objectives.default_options(name)
  opts.update(overrides)
  return opts


def dense(name, opts, ctx, scale, bias=0.0, a="x", b="y", **contrast_kw):
  """The objective's dense loss over pair (a, b) of the context."""
  module = objectives.get(name)
  rows, cols, consts = module.blocks(opts, ctx, a, b)
  theta = {"scale": jnp.float32(scale), "bias": jnp.float32(bias), **consts}
  return engine.dense(module.contrast(opts, pair=(a, b), **contrast_kw), theta, rows, cols)


def ce(logits, target):
  """sum_j target_j (lse(logits) - logits_j) in float64, one row."""
  logits = np.asarray(logits, np.float64)
  lse = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
  return float(np.sum(np.asarray(target, np.float64) * (lse - logits)))


def softmax(v):
  v = np.asarray(v, np.float64)
  e = np.exp(v - v.max())
  return e / e.sum()


def vector_config(objective=None, impl="dense", tile=3, batch=40, dim=16, queue=0, **opts):
  """A config with vector towers x, y (students) and tx, ty, ref (frozen towers reading x
  and y's inputs: teachers, references), and one loss term of `objective`."""
  c = make_tiny_config()
  vec = lambda **kw: ml_collections.ConfigDict({  # noqa: E731
      **dict(kind="vector", input="", features=8, width=16, depth=1, num_heads=2), **kw})
  with c.unlocked():
    c.towers = ml_collections.ConfigDict(dict(x=vec(), y=vec(), tx=vec(input="x"),
                                              ty=vec(input="y"), ref=vec(input="x")))
    c.data.source = "synthetic"
    c.train.frozen = ("tx/.*", "ty/.*", "ref/.*")
    c.loss.impl, c.loss.tile_size = impl, tile
    c.batch_size, c.model.embed_dim = batch, dim
    if objective is not None:
      c.loss.terms = ml_collections.ConfigDict({objective: terms.section(
          objective, queue=queue, **{**objectives.get(objective).EXAMPLE, **opts})})
  return c
