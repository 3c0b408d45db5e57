"""The ring driver: any objective (an `engine.Contrast`), any global batch, flat memory per
device.

Inside `shard_map` over the batch axes (data x fsdp, flattened into one ring of n devices),
each device keeps its local rows and passes its block of columns (features and metadata:
ids, reference or teacher embeddings, ...) around the ring with `lax.ppermute`. Within a
ring step it walks the travelling block in tiles of `tile_size` columns (the last tile is
zero-padded and masked, so any tile size works), computing one tile of scores [b, tile] at
a time with the objective's score function and its targets with the target function:

  softmax  per local row: running max / normaliser of the scores and, per target
           component, the running target mass and target-weighted score sum (log-weight
           targets such as a teacher's logits also keep their running max), so a teacher
           softmax streams in one pass with O(b) numbers; per travelling column the same
           statistics over the rows (the column direction). They travel with their block
           and come home after n steps, so one score tile serves both directions.
  sigmoid  a running sum of the pair terms.

Extra columns (a feature queue, `extra`) are a second travelling block scored in the row
direction only, without gradient.

The backward pass (`jax.custom_vjp`) recomputes every tile's scores under `jax.vjp` of the
objective's score function, forms dL/dscores from the saved statistics (softmax(S) minus
the target, or sigmoid(S) minus the labels) and pulls it back through the tile: the rows'
gradient accumulates locally, the columns' gradient in a block that travels with the
columns and comes home at the end, and theta's (scale, bias) is psum'd. So any
differentiable score (a dot product, a token max-sim, a product of several modalities'
rows) runs in the ring without a hand-written gradient. Per-device memory: the local
blocks, their gradients, the travelling block and its gradient (each with ppermute's
receive buffer), one tile and O(b) statistics, whatever the global batch.
"""

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from xmodal.losses import engine, families, objectives, targets

BATCH_AXES = engine.BATCH_AXES


def _pad_rows(a, rows, value=0):
  pad = rows - a.shape[0]
  if pad == 0:
    return a
  return jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1), constant_values=value)


def _tile(tree, k, tile):
  return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, k * tile, tile, axis=0), tree)


def _put(tree, k, tile, value):
  return jax.tree.map(lambda a, v: lax.dynamic_update_slice_in_dim(a, v, k * tile, axis=0),
                      tree, value)


def _f32(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float32), tree)


def _ring(n, axes, body, local, travelling, homeward=None):
  """Runs body(local, travelling) -> (local, travelling) once per device of the ring,
  shifting `travelling` one device along after each step, so every block ends up home.
  With `homeward` (indices into `travelling`), the last step is peeled off the loop and
  only those components (what was accumulated into the block) make the final hop; the
  others (the columns themselves) are not sent again."""
  perm = [(i, (i + 1) % n) for i in range(n)]
  shift = lambda tree: jax.tree.map(lambda a: lax.ppermute(a, axes, perm), tree)  # noqa: E731

  def step(_, carry):
    local, travelling = body(*carry)
    return local, shift(travelling) if n > 1 else travelling

  if homeward is None:
    return lax.fori_loop(0, n, step, (local, travelling))
  if n > 1:
    local, travelling = lax.fori_loop(0, n - 1, step, (local, travelling))
  local, travelling = body(local, travelling)
  if n > 1:
    travelling = tuple(shift(t) if i in homeward else t for i, t in enumerate(travelling))
  return local, travelling


class _Geometry:
  """Static sizes of one travelling block: c columns in tiles of `tile`."""

  def __init__(self, c, tile_size):
    self.c = c
    self.tile = max(1, min(tile_size, c))
    self.num_tiles = -(-c // self.tile)
    self.padded = self.num_tiles * self.tile

  def pad(self, block):
    block = engine.with_valid(block)
    return jax.tree.map(lambda a: _pad_rows(a, self.padded), block)   # valid pads False


def _target_structure(contrast, theta, rows, cols_tile):
  """The targets' pytree for one tile, abstractly: which components are linear weights and
  which log-weights (their arrays are recomputed in every tile)."""
  return jax.eval_shape(lambda: contrast.targets(theta, rows["meta"], cols_tile["meta"]))


def _init(n, shape):
  stats = families.softmax_init(n, shape)
  for c in stats["comps"]:
    c["alpha"] = jnp.zeros((n,), jnp.float32)      # set by every tile (same values)
  return stats


def _with_alpha(stats, targets, n):
  for c, t in zip(stats["comps"], targets):
    c["alpha"] = jnp.broadcast_to(jnp.asarray(t.alpha, jnp.float32), (n,))
  return stats


# ----------------------------------------------------------------------------- forward

def _psum(x, axes):
  return lax.psum(x, axes) if axes else x


def _forward_device(theta, rows, cols, extra, *, contrast, n, axes, geo, geo_extra, totals):
  fam, dirs = contrast.family, contrast.directions
  theta_c = lax.stop_gradient(theta)
  b = engine.rows_of(rows)
  cols_p = geo.pad(cols)
  extra_p = None if extra is None else geo_extra.pad(extra)
  softmax = fam == families.SOFTMAX
  row_dir = not softmax or "row" in dirs
  col_dir = softmax and "col" in dirs
  if softmax:
    shape = _target_structure(contrast, theta_c, rows, _tile(cols_p, 0, geo.tile))
    row_stats = _init(b, shape["row"])
    col_stats = _init(geo.padded, shape["col"]) if col_dir else None
    local = row_stats
  else:
    local, col_stats = jnp.zeros((), jnp.float32), None

  def tile_step(block, with_cols):
    def step(k, carry):
      local, trav = carry
      ct = _tile(trav[block], k, (geo if block == 0 else geo_extra).tile)
      valid = ct["meta"]["valid"][None, :]
      s_row, s_col = contrast.scores(theta, rows["feat"], ct["feat"], rows["meta"], ct["meta"])
      t = contrast.targets(theta_c, rows["meta"], ct["meta"])
      if not softmax:
        return local + families.sigmoid_dense(s_row, t["pair"], valid), trav
      if row_dir:
        local = families.softmax_update(local, s_row, t["row"], 1, valid)
        local = _with_alpha(local, t["row"], b)
      if with_cols:
        cs = _tile(trav[2], k, geo.tile)
        # Masked like the rows' update (padded columns' statistics are dropped anyway), so
        # XLA shares the masked weight products between the two directions.
        cs = _with_alpha(families.softmax_update(cs, s_col, t["col"], 0, valid), t["col"],
                         geo.tile)
        trav = trav[:2] + (_put(trav[2], k, geo.tile, cs),)
      return local, trav
    return step

  def body(local, trav):
    local, trav = lax.fori_loop(0, geo.num_tiles, tile_step(0, col_dir), (local, trav))
    if extra_p is not None:
      local, trav = lax.fori_loop(0, geo_extra.num_tiles, tile_step(1, False), (local, trav))
    return local, trav

  # Not peeled without column statistics: nothing comes home, and on XLA:CPU the peeled
  # variant holds one more block (measured), so the last, unneeded hop is the cheaper price.
  local, trav = _ring(n, axes, body, local, (cols_p, extra_p, col_stats),
                      homeward=(2,) if col_dir else None)
  rows_total, cols_total = totals
  if not softmax:
    return _psum(local, axes) / rows_total, ({}, {})
  w_row, w_col = contrast.weights
  total = jnp.zeros((), jnp.float32)
  row_saved = col_saved = {}
  if row_dir:
    losses, row_saved = families.softmax_finish(local, [c["alpha"] for c in local["comps"]])
    total = total + w_row * _psum(jnp.sum(losses), axes) / rows_total
  if col_dir:
    cs = jax.tree.map(lambda a: a[:geo.c], trav[2])
    losses, col_saved = families.softmax_finish(cs, [c["alpha"] for c in cs["comps"]])
    total = total + w_col * _psum(jnp.sum(losses), axes) / cols_total
  return total, (row_saved, col_saved)


# ----------------------------------------------------------------------------- backward

def _backward_device(theta, rows, cols, extra, saved, g, *, contrast, n, axes, geo, geo_extra,
                     totals):
  fam, dirs = contrast.family, contrast.directions
  softmax = fam == families.SOFTMAX
  row_dir = not softmax or "row" in dirs
  col_dir = softmax and "col" in dirs
  grad_cols = contrast.grad_cols
  theta_c = lax.stop_gradient(theta)
  row_saved, col_saved = saved
  w_row, w_col = contrast.weights if softmax else (1.0, 0.0)
  coef_row = g * w_row / totals[0]
  coef_col = g * w_col / totals[1]
  rf = _f32(rows["feat"])
  cols_p = geo.pad(cols)
  extra_p = None if extra is None else geo_extra.pad(extra)
  col_saved_p = (jax.tree.map(lambda a: _pad_rows(a, geo.padded, 1), col_saved)
                 if col_dir else None)
  dcols = (jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), cols_p["feat"])
           if grad_cols else None)
  local = (jax.tree.map(jnp.zeros_like, rf), jax.tree.map(jnp.zeros_like, _f32(theta)))

  def grads_of_scores(s_row, s_col, t, valid, cs):
    if not softmax:
      return coef_row * families.sigmoid_grad(s_row, t["pair"], valid), None
    d_row = d_col = None
    if row_dir:
      d_row = coef_row * families.softmax_grad(s_row, t["row"], row_saved, 1, valid)
    if cs is not None:
      d_col = coef_col * families.softmax_grad(s_col, t["col"], cs, 0, valid)
    return d_row, d_col

  def tile_step(block):
    g_ = geo if block == 0 else geo_extra
    with_col_grad = block == 0 and grad_cols

    def step(k, carry):
      (drf, dtheta), trav = carry
      ct = _tile(trav[block], k, g_.tile)
      valid = ct["meta"]["valid"][None, :]
      cs = _tile(trav[2], k, g_.tile) if (block == 0 and col_dir) else None
      t = contrast.targets(theta_c, rows["meta"], ct["meta"])
      both = row_dir and cs is not None
      # Only the scores this tile's directions use are pulled back (one array, or the
      # pair whose cotangents add up for a symmetric score).
      pick = (lambda st: st) if both else (lambda st: st[0] if row_dir else st[1])
      score = lambda th, r, c: pick(  # noqa: E731
          contrast.scores(th, r, c, rows["meta"], ct["meta"]))
      cf = _f32(ct["feat"])
      if with_col_grad:
        out, pull = jax.vjp(score, theta, rf, cf)
      else:
        out, pull = jax.vjp(lambda th, r: score(th, r, cf), theta, rf)
      s_row, s_col = out if both else (out, out)
      d_row, d_col = grads_of_scores(s_row, s_col, t, valid, cs)
      grads = pull((d_row, d_col) if both else (d_row if row_dir else d_col))
      dtheta = jax.tree.map(jnp.add, dtheta, grads[0])
      drf = jax.tree.map(jnp.add, drf, grads[1])
      if with_col_grad:
        dc = jax.tree.map(lambda acc, v: acc + jnp.where(
            valid.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0.0), _tile(trav[3], k, g_.tile),
            grads[2])
        trav = trav[:3] + (_put(trav[3], k, g_.tile, dc),)
      return (drf, dtheta), trav
    return step

  def body(local, trav):
    local, trav = lax.fori_loop(0, geo.num_tiles, tile_step(0), (local, trav))
    if extra_p is not None:
      local, trav = lax.fori_loop(0, geo_extra.num_tiles, tile_step(1), (local, trav))
    return local, trav

  (drf, dtheta), trav = _ring(n, axes, body, local, (cols_p, extra_p, col_saved_p, dcols),
                              homeward=(3,) if grad_cols else None)
  dcf = jax.tree.map(lambda a: a[:geo.c], trav[3]) if grad_cols else None
  return dtheta_psum(dtheta, axes), drf, dcf


def dtheta_psum(dtheta, axes):
  return jax.tree.map(lambda a: _psum(a, axes), dtheta)


# ----------------------------------------------------------------------------- public

def ring(contrast: engine.Contrast, mesh, tile_size: int = 256, axes=BATCH_AXES) -> Callable:
  """f(theta, rows, cols, extra=None) -> scalar loss, equal to `engine.dense` in value and
  in the gradients w.r.t. theta and the rows' and columns' features. Rows, columns and
  extra columns are split over `axes` of `mesh` in contiguous blocks."""
  if tile_size < 1:
    raise ValueError(f"config.loss.tile_size: must be > 0, got {tile_size}")
  axes = tuple(a for a in axes if a in mesh.axis_names)
  n = math.prod(mesh.shape[a] for a in axes)

  def statics(rows, cols, extra):
    for name, block in (("rows", rows), ("columns", cols), ("extra columns", extra)):
      if block is not None and engine.rows_of(block) % n:
        raise ValueError(f"ring loss: {engine.rows_of(block)} {name} are not divisible by "
                         f"the {n} devices of mesh axes {axes}")
    c = engine.rows_of(cols) // n
    q = 0 if extra is None else engine.rows_of(extra) // n
    return dict(contrast=contrast, n=n, axes=axes, geo=_Geometry(c, tile_size),
                geo_extra=_Geometry(max(q, 1), tile_size),
                totals=(engine.rows_of(rows), engine.rows_of(cols)))

  def forward(theta, rows, cols, extra):
    f = functools.partial(_forward_device, **statics(rows, cols, extra))
    # Specs are pytree prefixes: every leaf of a block is split over the batch axes.
    return jax.shard_map(f, mesh=mesh, in_specs=(P(), P(axes), P(axes), P(axes)),
                         out_specs=(P(), P(axes)), check_vma=False)(theta, rows, cols, extra)

  @jax.custom_vjp
  def loss(theta, rows, cols, extra):
    return forward(theta, rows, cols, extra)[0]

  def loss_fwd(theta, rows, cols, extra):
    value, saved = forward(theta, rows, cols, extra)
    return value, (theta, rows, cols, extra, saved)

  def loss_bwd(res, g):
    theta, rows, cols, extra, saved = res
    kw = statics(rows, cols, extra)
    f = functools.partial(_backward_device, **kw)
    dtheta, drf, dcf = jax.shard_map(
        f, mesh=mesh, in_specs=(P(), P(axes), P(axes), P(axes), P(axes), P()),
        out_specs=(P(), P(axes), P(axes)), check_vma=False)(theta, rows, cols, extra, saved, g)
    return _cotangents(contrast, theta, rows, cols, extra, dtheta, drf, dcf)

  loss.defvjp(loss_fwd, loss_bwd)

  def f(theta, rows, cols, extra=None):
    theta = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), theta)
    return loss(theta, rows, cols, extra)

  return f


def local(contrast: engine.Contrast, tile_size: int, totals: tuple) -> Callable:
  """f(theta, rows, cols, extra=None) -> this device's share of the loss (its rows'
  losses over `totals` = (all rows, all columns)) against columns it holds whole: the
  ring's tile loop and recomputing custom VJP without the ring. For use inside shard_map
  (the gathered driver)."""

  def statics(cols, extra):
    q = 0 if extra is None else engine.rows_of(extra)
    return dict(contrast=contrast, n=1, axes=(), totals=totals,
                geo=_Geometry(engine.rows_of(cols), tile_size),
                geo_extra=_Geometry(max(q, 1), tile_size))

  @jax.custom_vjp
  def f(theta, rows, cols, extra):
    return _forward_device(theta, rows, cols, extra, **statics(cols, extra))[0]

  def f_fwd(theta, rows, cols, extra):
    value, saved = _forward_device(theta, rows, cols, extra, **statics(cols, extra))
    return value, (theta, rows, cols, extra, saved)

  def f_bwd(res, g):
    theta, rows, cols, extra, saved = res
    dtheta, drf, dcf = _backward_device(theta, rows, cols, extra, saved, g,
                                        **statics(cols, extra))
    return _cotangents(contrast, theta, rows, cols, extra, dtheta, drf, dcf)

  f.defvjp(f_fwd, f_bwd)
  return lambda theta, rows, cols, extra=None: f(theta, rows, cols, extra)


def _cotangents(contrast, theta, rows, cols, extra, dtheta, drf, dcf):
  cast = lambda d, x: jax.tree.map(lambda a, b: a.astype(b.dtype), d, x)  # noqa: E731
  drows = {"feat": cast(drf, rows["feat"]), "meta": engine.zero_cotangent(rows["meta"])}
  dcols = {"feat": (cast(dcf, cols["feat"]) if contrast.grad_cols
                    else jax.tree.map(jnp.zeros_like, cols["feat"])),
           "meta": engine.zero_cotangent(cols["meta"])}
  dextra = None if extra is None else engine.zero_cotangent(extra)
  return cast(dtheta, theta), drows, dcols, dextra


def gathered(contrast: engine.Contrast, mesh, tile_size: int = 256,
             axes=BATCH_AXES) -> Callable:
  """f(theta, rows, cols, extra=None) -> scalar loss, equal to `engine.dense`. Inside
  shard_map each device all-gathers the columns (and extra columns) and scores its rows
  against them tile by tile (`local`); for the column direction it all-gathers the rows
  and scores its own columns against them (the swapped objective). Memory: the gathered
  [B, D] blocks and one [b, tile] tile; JAX differentiates through the gathers."""
  if tile_size < 1:
    raise ValueError(f"config.loss.tile_size: must be > 0, got {tile_size}")
  axes = tuple(a for a in axes if a in mesh.axis_names)
  softmax = contrast.family == families.SOFTMAX
  w_row, w_col = contrast.weights
  forward = dataclasses.replace(contrast, directions=("row",), weights=(w_row, 0.0))
  backward = (dataclasses.replace(contrast.swap(), directions=("row",), weights=(w_col, 0.0))
              if softmax and "col" in contrast.directions else None)
  if softmax and "row" not in contrast.directions:
    forward = None

  def f(theta, rows, cols, extra=None):
    engine.check_extra(contrast, extra)
    if not contrast.grad_cols:
      cols = engine.no_grad(cols)
    if extra is not None:
      extra = engine.no_grad(extra)
    totals = (engine.rows_of(rows), engine.rows_of(cols))
    row_pass = forward and local(forward, tile_size, totals)
    col_pass = backward and local(backward, tile_size, totals[::-1])

    def per_device(theta, rows, cols, extra):
      total = jnp.zeros((), jnp.float32)
      if row_pass:
        gather = lambda b: None if b is None else lax.all_gather(b, axes, tiled=True)  # noqa: E731
        total = total + row_pass(theta, rows, gather(cols), gather(extra))
      if col_pass:
        total = total + col_pass(theta, cols, lax.all_gather(rows, axes, tiled=True))
      return lax.psum(total, axes)

    theta = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), theta)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axes), P(axes), P(axes)),
                         out_specs=P(), check_vma=False)(theta, rows, cols, extra)

  return f


def ring_loss(name: str, mesh, tile_size: int = 256, axes=BATCH_AXES,
              weight_fn: Callable = targets.same_id) -> Callable:
  """The two-tower entry point: f(x, y, scale, bias=0, ids=None) -> scalar mean loss of
  objective `name` ("softmax" or "sigmoid") with x, y [B, D] and optional group ids [B]
  (or soft targets `weight_fn(row_ids, col_ids)`, symmetric, in [0, 1])."""
  if name not in objectives.names():
    raise ValueError(f"config.loss.name: unknown loss {name!r}")
  contrast = objectives.get(name).contrast(objectives.default_options(name), weight_fn=weight_fn)
  run = ring(contrast, mesh, tile_size, axes)

  def f(x, y, scale, bias=0.0, ids=None):
    ids = jnp.arange(x.shape[0], dtype=jnp.int32) if ids is None else jnp.asarray(ids)
    theta = {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    return run(theta, {"feat": x, "meta": {"ids": ids}}, {"feat": y, "meta": {"ids": ids}})
  return f
