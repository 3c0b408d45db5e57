"""Objectives over a group of towers (more than a pair): what their `blocks` return.

A pair objective's `blocks(opts, ctx, a, b)` returns one (rows, cols, consts) for one
driver call. A group objective (module attribute GROUP = True; its term's `pairs` entries
are groups 'a:b:c' of two or more towers, by default one group of every tower) returns
`Parts` from `blocks(opts, ctx, *towers)`: several driver calls of its one Contrast
(Symile's anchors in turn, binding's pairs, MV-DHEL's views), each with a weight and a
label (logged as loss/<term>/<label>), plus an optional `local(theta)` -> scalar: a part of
the loss that needs no column of another device (a positive's own score, a per-example
constant), computed in the step's global view and added to the parts' weighted sum.
"""

import dataclasses
from typing import Callable

from xmodal.fields import ConfigError


@dataclasses.dataclass
class Part:
  """One driver call: rows against columns (engine blocks) with target constants."""
  rows: dict
  cols: dict
  consts: dict = dataclasses.field(default_factory=dict)
  weight: float = 1.0
  label: str = ""


@dataclasses.dataclass
class Parts:
  """value = sum_p weight_p * driver(theta_p, rows_p, cols_p) + local(theta)."""
  parts: list
  local: Callable | None = None


def is_group(module) -> bool:
  return bool(getattr(module, "GROUP", False))


def dense(module, opts, ctx, towers, scale, bias=0.0):
  """A group objective's value over `towers` on one device (the reference driver)."""
  import jax.numpy as jnp   # noqa: PLC0415
  from xmodal.losses import engine, targets   # noqa: PLC0415
  out = module.blocks(opts, ctx, *towers)
  contrast = module.contrast(opts, pair=tuple(towers))
  theta = {"scale": jnp.float32(scale), "bias": jnp.float32(bias)}
  value = 0.0
  for p in out.parts:
    value = value + p.weight * engine.dense(contrast, {**theta, **targets.stop(p.consts)},
                                            p.rows, p.cols)
  return value + (out.local(theta) if out.local is not None else 0.0)


def within_shards(values, index, shards):
  """values[index] [n, ...] for an index [n] that stays within each of `shards` equal
  blocks of rows: gathered block by block, so no row moves between devices."""
  import jax.numpy as jnp   # noqa: PLC0415
  n = values.shape[0]
  b = n // shards
  v = values.reshape((shards, b) + values.shape[1:])
  i = index.reshape(shards, b) - (jnp.arange(shards) * b)[:, None]
  i = i.reshape(i.shape + (1,) * (values.ndim - 1))
  return jnp.take_along_axis(v, i, axis=1).reshape(values.shape)


def permutation_within_shards(rng, n, shards):
  """A random permutation [n] of global row indices that maps each of `shards` equal
  blocks of rows onto itself."""
  import jax   # noqa: PLC0415
  import jax.numpy as jnp   # noqa: PLC0415
  b = n // shards
  local = jax.vmap(lambda k: jax.random.permutation(k, b))(jax.random.split(rng, shards))
  return (local + (jnp.arange(shards) * b)[:, None]).reshape(n)


def check_towers(ctx_emb, towers, name):
  for t in towers:
    if ctx_emb[t].ndim != 2:
      raise ValueError(f"{name}: tower {t!r} gives {ctx_emb[t].shape} embeddings; a group "
                       f"objective takes one [B, D] embedding per example per tower")


def check_one_row(name: str, opts, config, where: str) -> None:
  """Config rules every group objective shares: an `anchor` option (if it has one) names a
  tower, and each example has one embedding per tower (not data.captions='k')."""
  anchor = opts.get("anchor", "")
  if anchor and anchor not in config.towers:
    raise ConfigError(f"config.{where}anchor: {anchor!r} is not a tower "
                      f"({sorted(config.towers.keys())})")
  if config.data.get("captions") == "k":
    raise ConfigError(f"config.{where}objective: {name} takes one embedding per example per "
                      f"tower; not with data.captions='k'")
