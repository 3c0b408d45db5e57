"""Contrastive objectives over a dict of embeddings, on one device or sharded over a mesh.

The objective engine, in one picture: an objective (xmodal/losses/objectives/<name>.py) is
written once, as a score of a block of rows against a block of columns and a target for
each score (engine.Contrast); the drivers run every objective:

  dense     every row on one device (the reference; engine.dense).
  gathered  inside `shard_map`: each device all-gathers the columns (and the rows, for the
            column direction) from every device of the batch axes (data x fsdp) and scores
            its local rows against them tile by tile (`config.loss.tile_size` columns),
            with the ring's recomputing custom VJP (ring.gathered). Memory: the gathered
            [B, D] blocks and one [b, tile_size] tile.
  ring      inside `shard_map`: blocks of columns pass around the devices with `ppermute`
            and are scored tile by tile (`config.loss.tile_size` columns) with running
            statistics and a recomputing custom VJP (losses/ring.py). Memory: a few [b, D]
            blocks plus one [b, tile_size] tile, at any global batch.

`make_objective(config, mesh)` builds the config's loss: weighted terms (losses/terms.py),
each an objective over tower pairs, with the state some of them keep between steps (an
EMA copy of towers, a feature queue: losses/state.py).

`dense_loss`, `gathered_loss`, `pair_loss_fn` and `ring.ring_loss` keep the older
two-tower entry points (name, x, y, scale, bias, ids) working on the engine.
"""

import dataclasses
import math
import zlib
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from xmodal import config as config_lib, microbatch
from xmodal.losses import (engine, groups, objectives, ring, state as state_lib, targets,
                           terms)

BATCH_AXES = engine.BATCH_AXES
GROUP_KEY = "group"            # data/pipeline.py GROUP_KEY: the batch's group ids


@dataclasses.dataclass
class Context:
  """What a term's `blocks` reads in one step.

  emb: {tower: [B, D] or [B, K, D]}, the student towers' embeddings (differentiable) and
       frozen teacher / reference towers' (constants); ids: int [B] (examples' global index
       or group ids); batch: {key: [B, ...]} batch arrays the terms asked for (stored
       teacher embeddings); ema: {tower: [B, D]} embeddings of EMA copies; rng: a key (for
       random mixing) or None; step: the optimizer step; shards: devices of the batch axes
       (randomness that must stay within a device's rows draws per shard)."""
  emb: dict
  ids: jax.Array
  batch: dict
  ema: dict
  rng: object
  step: object
  shards: int


def driver(impl: str, contrast: engine.Contrast, mesh, tile_size: int = 256) -> Callable:
  """f(theta, rows, cols, extra=None) -> scalar, for `config.loss.impl`."""
  if impl == "dense":
    return lambda theta, rows, cols, extra=None: engine.dense(contrast, theta, rows, cols, extra)
  if impl == "gathered":
    return ring.gathered(contrast, mesh, tile_size, BATCH_AXES)
  if impl == "ring":
    return ring.ring(contrast, mesh, tile_size, BATCH_AXES)
  raise ValueError(f"config.loss.impl: unknown implementation {impl!r}")


def shards(mesh) -> int:
  """Devices of the batch axes (1 without a mesh)."""
  if mesh is None:
    return 1
  return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


class Objective:
  """The config's loss. `objective(params, embeddings, ids=None)` -> (loss, {"loss/...":
  value}) for stateless objectives; the train step uses `prepare` / `loss` / `new_state`
  (see xmodal/train.py), which also carry the EMA copies and queues (losses/state.py)."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    self.terms = terms.resolve(config)
    self.one_term = terms.one_term(config)
    self.shards = shards(mesh)
    self.group = config_lib.group_positives(config)
    self._passes = {(t.name,) + p: self._make_passes(t, p) for t in self.terms for p in t.pairs}
    self.state = state_lib.LossState(config, self.terms, self.shards)

  def _make_passes(self, term, pair):
    c = term.module.contrast(term.opts, pair=pair)
    impl, tile = self.config.loss.impl, self.config.loss.tile_size
    if not term.queue:
      return (driver(impl, c, self.mesh, tile),)
    forward = dataclasses.replace(c, directions=("row",), weights=(c.weights[0], 0.0))
    backward = dataclasses.replace(c.swap(), directions=("row",), weights=(c.weights[1], 0.0))
    return (driver(impl, forward, self.mesh, tile), driver(impl, backward, self.mesh, tile))

  # ------------------------------------------------------------------ what the step provides
  def student_towers(self) -> tuple:
    return tuple(sorted({t for term in self.terms for p in term.pairs for t in p}))

  def frozen_towers(self) -> tuple:
    """Towers whose embeddings the terms read as constants (teachers, references) and that
    are in no pair: embedded without gradient."""
    need = {t for term in self.terms for p in term.pairs for t in term.needs(*p)["towers"]}
    return tuple(sorted(need - set(self.student_towers())))

  def batch_keys(self) -> tuple:
    """Batch keys the loss reads besides the towers' inputs: the group ids (with group
    positives) and the terms' (stored teacher embeddings)."""
    keys = {k for term in self.terms for p in term.pairs for k in term.needs(*p)["batch"]}
    return (GROUP_KEY,) * self.group + tuple(sorted(keys))

  def inputs(self, batch) -> dict:
    """{tower: its batch input} for the towers the loss differentiates, and
    {"<tower>:view": its second view} for terms between views (VIEWS: data.views)."""
    out = {t: batch[config_lib.input_key(self.config, t)] for t in self.student_towers()}
    for t in self.view_towers():
      out[f"{t}:view"] = batch[f"{config_lib.input_key(self.config, t)}:view"]
    return out

  def view_towers(self) -> tuple:
    return tuple(sorted({t for term in self.terms if getattr(term.module, "VIEWS", False)
                         for p in term.pairs for t in p}))

  def prepare(self, model, state, batch, rng, microbatches: int = 1):
    """The step's work without gradient, before the loss: -> (extras for `loss`, the loss
    state this step reads). Embeds the batch with the frozen teacher / reference towers
    and with the EMA copies (moved towards the current params first), one micro-batch at
    a time when `microbatches` > 1."""
    params = state["params"]
    extras = {"rng": jax.random.fold_in(rng, 0x5eed), "step": state["step"]}
    keys = self.batch_keys()
    if GROUP_KEY in batch:            # the train loop puts it there with group positives
      extras["group"] = batch[GROUP_KEY]
    if keys[self.group:]:
      extras["batch"] = {k: batch[k] for k in keys[self.group:]}
    frozen = self.frozen_towers()
    if frozen:
      extras["frozen"] = microbatch.embed(
          model, params, {t: batch[config_lib.input_key(self.config, t)] for t in frozen},
          microbatches)
    momenta = {t.name: t.opts.get("momentum", 0.0) for t in self.terms}
    prepared = self.state.prepare(state.get("loss"), params, momenta)
    if prepared is not None and "ema" in prepared:
      extras["ema"] = {
          term: microbatch.embed(model, {**params, **trees},
                                 {t: batch[config_lib.input_key(self.config, t)] for t in trees},
                                 microbatches)
          for term, trees in prepared["ema"].items()}
    if prepared is not None and "queue" in prepared:
      extras["queues"] = prepared["queue"]
    return extras, prepared

  # ------------------------------------------------------------------ the loss
  def __call__(self, params, embeddings, ids=None, extras=None):
    extras = dict(extras or {})
    if ids is not None:
      extras["group"] = ids
    loss, (metrics, _) = self.loss(params, embeddings, extras)
    return loss, metrics

  def context(self, embeddings, extras) -> Context:
    any_emb = next(iter(embeddings.values()))
    batch = any_emb.shape[0]
    ids = extras.get("group")
    ids = jnp.arange(batch, dtype=jnp.int32) if ids is None else jnp.asarray(ids, jnp.int32)
    emb = dict(embeddings)
    emb.update({k: lax.stop_gradient(v) for k, v in extras.get("frozen", {}).items()})
    return Context(emb=emb, ids=ids, batch=extras.get("batch", {}),
                   ema=extras.get("ema", {}), rng=extras.get("rng"),
                   step=extras.get("step", jnp.zeros((), jnp.int32)), shards=self.shards)

  def scale_and_bias(self, params, term):
    scale_name, bias_name = term.param_names()
    # The scale as it is: `loss.max_scale` bounds the parameter after each optimizer step
    # (optim.clamp_scale), never here, so the gradient at the bound is not cut in half.
    scale = jnp.exp(params[scale_name])
    bias = params.get(bias_name, jnp.zeros((), jnp.float32))
    return scale, bias

  def loss(self, params, embeddings, extras):
    """-> (loss, (metrics {"loss/<term>[/a-b]": value}, queue updates)). extras: {"group",
    "frozen", "batch", "ema", "rng", "step", "queues"} as `prepare` returns them."""
    base = self.context(embeddings, extras)
    total, metrics, updates = 0.0, {}, {}
    for term in self.terms:
      ctx = dataclasses.replace(base, ema=base.ema.get(term.name, {}),
                                rng=None if base.rng is None else jax.random.fold_in(
                                    base.rng, zlib.crc32(term.name.encode())))
      scale, bias = self.scale_and_bias(params, term)
      if term.scale == "own":
        metrics[f"scale/{term.name}"] = scale
      values = {}
      for group in term.pairs:
        if groups.is_group(term.module):
          values.update(self._group_values(term, ctx, group, scale, bias))
          continue
        a, b = group
        rows, cols, consts = term.module.blocks(term.opts, ctx, a, b)
        theta = {"scale": scale, "bias": bias, **targets.stop(consts)}
        passes = self._passes[(term.name, a, b)]
        if len(passes) == 1:
          values[f"{a}-{b}"] = passes[0](theta, rows, cols)
        else:
          queue = extras["queues"][term.name][f"{a}:{b}"]
          values[f"{a}-{b}"] = (passes[0](theta, rows, cols, queue["ab"])
                                + passes[1](theta, cols, rows, queue["ba"]))
          updates.setdefault(term.name, {})[f"{a}:{b}"] = self.state.entries(term, rows, cols)
      if groups.is_group(term.module):        # each group's value is its parts' sum
        value = sum(v for k, v in values.items() if "/" not in k) / len(term.pairs)
      else:
        value = sum(values.values()) / len(values)
      total = total + term.weight * value
      if self.one_term:
        metrics.update({f"loss/{k}": v for k, v in values.items()})
      else:
        metrics[f"loss/{term.name}"] = value
        if len(values) > 1:
          metrics.update({f"loss/{term.name}/{k}": v for k, v in values.items()})
    return total, (metrics, updates)

  def _group_values(self, term, ctx, group, scale, bias) -> dict:
    """A group objective's value over one group of towers ({"a-b-c": value}) and its
    labelled parts' ({"a-b-c/label": driver value}; metric names keep to the characters
    TensorBoard keeps): losses/groups.py."""
    out = term.module.blocks(term.opts, ctx, *group)
    run = self._passes[(term.name,) + group][0]
    name = "-".join(group)
    theta = {"scale": scale, "bias": bias}
    value, parts = 0.0, {}
    for part in out.parts:
      v = run({**theta, **targets.stop(part.consts)}, part.rows, part.cols)
      value = value + part.weight * v
      if part.label:
        parts[f"{name}/{part.label.replace(':', '-')}"] = v
    if out.local is not None:
      value = value + out.local(theta)
    return {name: value, **parts}

  # ------------------------------------------------------------------ state between steps
  def init_state(self, params) -> dict:
    return self.state.init(params)

  def new_state(self, prepared, updates) -> dict:
    """The loss's part of the next train state ({} when it keeps none)."""
    return self.state.advance(prepared, updates)


def make_objective(config, mesh) -> Objective:
  """The config's loss: see `Objective`."""
  return Objective(config, mesh)


# ----------------------------------------------------------------------------- two-tower API

def _contrast(name, weight_fn=targets.same_id):
  return objectives.get(name).contrast(objectives.default_options(name), weight_fn=weight_fn)


def _blocks(x, y, ids):
  ids = jnp.arange(x.shape[0], dtype=jnp.int32) if ids is None else jnp.asarray(ids)
  if ids.shape != x.shape[:1]:
    raise ValueError(f"group ids of shape {ids.shape} for a batch of {x.shape[0]} rows")
  return {"feat": x, "meta": {"ids": ids}}, {"feat": y, "meta": {"ids": ids}}


def _theta(scale, bias):
  return {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}


def dense_loss(name: str, x, y, scale, bias=0.0, ids=None):
  """Reference: x, y [B, D] on one device -> scalar mean loss of objective `name`
  ("softmax" or "sigmoid"). ids [B]: optional group ids (equal ids are positives)."""
  return engine.dense(_contrast(name), _theta(scale, bias), *_blocks(x, y, ids))


def pair_loss_fn(name: str, impl: str, mesh, tile_size: int = 256,
                 weight_fn=targets.same_id) -> Callable:
  """f(x, y, scale, bias=0, ids=None) -> scalar mean loss of objective `name` with
  `config.loss.impl`, x, y [B, D] split over the batch axes of `mesh`."""
  run = driver(impl, _contrast(name, weight_fn), mesh, tile_size)

  def f(x, y, scale, bias=0.0, ids=None):
    return run(_theta(scale, bias), *_blocks(x, y, ids))
  return f


def gathered_loss(name: str, mesh, axes=BATCH_AXES, weight_fn=targets.same_id,
                  tile_size: int = 256) -> Callable:
  """f(x, y, scale, bias=0, ids=None) -> scalar: the gathered driver (see `pair_loss_fn`)."""
  run = ring.gathered(_contrast(name, weight_fn), mesh, tile_size, axes)
  return lambda x, y, scale, bias=0.0, ids=None: run(_theta(scale, bias), *_blocks(x, y, ids))


