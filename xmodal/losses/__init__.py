"""Contrastive objectives over a dict of embeddings, on one device or sharded over a mesh.

Each loss module (`softmax`, `sigmoid`) provides `row_sum(x, y, x_all, y_all, offset, scale,
bias)`: the loss summed over a block of local rows x, y [b, D] scored against all rows
x_all, y_all [B, D], whose positives sit at columns offset..offset+b. Three implementations
(`config.loss.impl`) turn it into a mean over the global batch:

  dense     every row on one device: row_sum(x, y, x, y, 0, ...) / B (the reference).
  gathered  inside `shard_map`: each device all-gathers the other modality from every device
            of the batch axes (data x fsdp), scores its b local rows against all B rows with
            labels offset by its position, and the sums are psum'd. Memory: a [b, B] block.
  ring      inside `shard_map`: blocks of y pass around the devices of the batch axes with
            `ppermute` and are scored tile by tile (`config.loss.tile_size` columns) with
            running log-sum-exp / sums and a recomputing custom VJP (losses/ring.py).
            Memory: a few [b, D] blocks plus one [b, tile_size] tile, at any global batch.

Every implementation also takes optional int group ids [B] (rows with equal ids are
positives: several captions of one image; see losses/targets.py); `gathered` all-gathers
them with the embeddings.

`make_objective(config, mesh)` sums the chosen loss over modality pairs (every pair of towers
unless `config.loss.pairs` says otherwise) and returns their mean.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from xmodal import config as config_lib
from xmodal.losses import ring, sigmoid, softmax, targets

LOSSES = {"softmax": softmax, "sigmoid": sigmoid}
BATCH_AXES = ("data", "fsdp")


def dense_loss(name: str, x, y, scale, bias=0.0, ids=None):
  """Reference: x, y [B, D] on one device -> scalar mean loss. ids [B]: optional group ids
  (rows with equal ids are positives; see losses/targets.py)."""
  if ids is not None:
    return targets.dense_loss_with_ids(name, x, y, scale, bias, ids)
  return LOSSES[name].row_sum(x, y, x, y, 0, scale, bias) / x.shape[0]


def gathered_loss(name: str, mesh, axes=BATCH_AXES, weight_fn=targets.same_id) -> Callable:
  """Sharded: returns f(x, y, scale, bias, ids=None) -> scalar, with x, y [B, D] and the
  optional int group ids [B] split over `axes`. Without ids every row's only positive is
  its own pair; with ids, rows with equal ids are positives (`weight_fn`, as in
  `targets.dense_loss_with_ids` and the ring loss): the ids are all-gathered with the
  embeddings, so groups may span devices."""
  loss = LOSSES[name]
  axes = tuple(a for a in axes if a in mesh.axis_names)

  def per_device(x, y, scale, bias):
    # x, y: this device's [b, D] rows. Labels are offset by the device's position on `axes`.
    offset = lax.axis_index(axes) * x.shape[0]
    y_all = lax.all_gather(y, axes, tiled=True)
    x_all = lax.all_gather(x, axes, tiled=True) if loss.NEEDS_GATHERED_X else x
    total = loss.row_sum(x, y, x_all, y_all, offset, scale, bias)
    return lax.psum(total, axes) / y_all.shape[0]

  def per_device_ids(x, y, ids, scale, bias):
    # ids_all[j] is the id of row j of y_all / x_all: gathered in the same device order.
    y_all = lax.all_gather(y, axes, tiled=True)
    ids_all = lax.all_gather(ids, axes, tiled=True)
    x_all = lax.all_gather(x, axes, tiled=True) if loss.NEEDS_GATHERED_X else x
    total = targets.row_sum_with_ids(name, x, y, x_all, y_all, ids, ids_all, scale, bias,
                                     weight_fn)
    return lax.psum(total, axes) / y_all.shape[0]

  plain = jax.shard_map(per_device, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()),
                        out_specs=P())
  grouped = jax.shard_map(per_device_ids, mesh=mesh,
                          in_specs=(P(axes), P(axes), P(axes), P(), P()), out_specs=P())

  def f(x, y, scale, bias=0.0, ids=None):
    scale = jnp.asarray(scale, jnp.float32)
    bias = jnp.asarray(bias, jnp.float32)
    if ids is None:
      return plain(x, y, scale, bias)
    ids = jnp.asarray(ids)
    if ids.shape != x.shape[:1]:
      raise ValueError(f"gathered loss: group ids of shape {ids.shape} for a batch of "
                       f"{x.shape[0]} rows")
    return grouped(x, y, ids, scale, bias)

  return f


def pair_loss_fn(name: str, impl: str, mesh, tile_size: int = 256) -> Callable:
  """f(x, y, scale, bias, ids=None) -> scalar mean loss, for `config.loss.impl`. ids [B]:
  optional int group ids (rows with equal ids are positives). `tile_size`: columns per
  tile of the ring implementation (ignored by the others)."""
  if impl == "dense":
    return lambda x, y, scale, bias=0.0, ids=None: dense_loss(name, x, y, scale, bias, ids)
  if impl == "gathered":
    return gathered_loss(name, mesh)
  if impl == "ring":
    return ring.ring_loss(name, mesh, tile_size=tile_size, axes=BATCH_AXES)
  raise ValueError(f"config.loss.impl: unknown implementation {impl!r}")


def make_objective(config, mesh) -> Callable:
  """Returns objective(params, embeddings, ids=None) -> (loss, {"loss/a-b": pair loss}).

  params: the model's params (for `logit_scale` and `logit_bias`); embeddings:
  {modality: [B, D]} unit vectors; ids: optional int32 group ids [B] (the batch's "group",
  see `config_lib.group_positives`): rows with equal ids are positives of each other in
  every pair; None = each row's only positive is its own pair.
  """
  pairs = config_lib.loss_pairs(config)
  pair_loss = pair_loss_fn(config.loss.name, config.loss.impl, mesh,
                           tile_size=config.loss.tile_size)

  def objective(params, embeddings, ids=None):
    # The scale as it is: `loss.max_scale` bounds the parameter after each optimizer step
    # (optim.clamp_scale), never here, so the gradient at the bound is not cut in half.
    scale = jnp.exp(params["logit_scale"])
    bias = params.get("logit_bias", jnp.zeros((), jnp.float32))
    per_pair = {f"loss/{a}-{b}": pair_loss(embeddings[a], embeddings[b], scale, bias,
                                          ids=ids)
                for a, b in pairs}
    return sum(per_pair.values()) / len(per_pair), per_pair

  return objective
