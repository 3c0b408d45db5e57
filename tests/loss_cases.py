"""Shared pieces of the objective tests: a Context of random embeddings, one objective's
dense loss from it, and float64 numpy helpers for brute-force references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal import losses
from xmodal.losses import engine, groups, objectives, terms
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
  """A config with vector towers x, y (students; and z for a group objective) and tx, ty,
  ref (frozen towers reading x and y's inputs: teachers, references), and one loss term of
  `objective`."""
  c = make_tiny_config()
  vec = lambda **kw: ml_collections.ConfigDict({  # noqa: E731
      **dict(kind="vector", input="", features=8, width=16, depth=1, num_heads=2), **kw})
  with c.unlocked():
    c.towers = ml_collections.ConfigDict(dict(x=vec(), y=vec(), tx=vec(input="x"),
                                              ty=vec(input="y"), ref=vec(input="x")))
    if objective is not None and groups.is_group(objectives.get(objective)):
      c.towers.z = vec()                      # a third student tower for group objectives
    c.data.source = "synthetic"
    c.train.frozen = ("tx/.*", "ty/.*", "ref/.*")
    c.loss.impl, c.loss.tile_size = impl, tile
    c.batch_size, c.model.embed_dim = batch, dim
    if objective is not None:
      c.loss.terms = ml_collections.ConfigDict({objective: terms.section(
          objective, queue=queue, **{**objectives.get(objective).EXAMPLE, **opts})})
  return c


class ToyTowers(nn.Module):
  """Small stand-in towers for learning tests: per modality a ReLU MLP (hidden units per
  `hidden`, 0 = the identity: a frozen embedding given as input), unit outputs, and the
  loss's learnable scalars as MultiTower makes them."""
  config: ml_collections.ConfigDict
  hidden: dict
  out: int

  @nn.compact
  def __call__(self, inputs, train=False, normalize=True):
    for name, value in terms.scalars(self.config).items():
      self.param(name, nn.initializers.constant(value), ())
    out = {}
    for m, x in inputs.items():
      z = _ToyMLP(self.hidden[m], self.out, name=m)(x) if self.hidden[m] else x
      out[m] = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return out


class _ToyMLP(nn.Module):
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.out, name="out")(nn.relu(nn.Dense(self.hidden, name="hidden")(x)))


def train_run(config, batches, steps, model, mesh=None):
  """Trains `model` (e.g. ToyTowers) with xmodal's train step, optimizer and objective
  from `config`, on `batches(step) -> {key: array}` for `steps` steps on one device;
  returns (final state, per-step losses)."""
  from xmodal import optim, parallel, train   # noqa: PLC0415
  mesh = mesh or parallel.make_mesh(config, jax.devices()[:1])
  tx = optim.make_optimizer(config)
  objective = losses.make_objective(config, mesh)
  first = {k: jnp.asarray(v) for k, v in batches(0).items()}
  params = model.init(jax.random.key(config.seed), {k: first[k] for k in config.towers})["params"]
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
           **objective.init_state(params)}
  step = jax.jit(train.make_train_step(model, tx, objective, optim.schedule(config),
                                       config.train.microbatches, config.seed))
  history = []
  for i in range(steps):
    state, metrics = step(state, {k: jnp.asarray(v) for k, v in batches(i).items()})
    history.append(float(metrics["loss"]))
  return state, history


def vector_towers(**towers):
  """{name: vector tower section} from {name: dict(overrides)}."""
  from xmodal import default_config   # noqa: PLC0415
  out = ml_collections.ConfigDict()
  for name, kw in towers.items():
    t = default_config.tower_defaults("vector")
    t.update(kw)
    out[name] = t
  return out
