"""Ring implementation of the contrastive losses: any global batch, flat memory per device.

Inside `shard_map` over the batch axes (data x fsdp, flattened into one ring of n devices),
each device keeps its local x, y [b, D] and passes a block of y rows around the ring with
`lax.ppermute`. Within a ring step it walks the travelling block in tiles of `tile_size`
columns (the last tile is zero-padded and masked, so any tile size works), scoring its
local x rows against one tile [b, tile] at a time:

  softmax  per local x row: running max / sum-exp / positive sums (x->y);
           per travelling y column: the same statistics over the x rows (y->x). They travel
           with their y block and come home after n steps, so one matmul per tile serves
           both directions and neither [b, B] matrix is ever materialised.
  sigmoid  a running sum of the pair terms.

The backward pass (`jax.custom_vjp`) recomputes every tile from the saved per-row
statistics (max, log-sum-exp below the max and positive weight sums, [b] each), adds the tile's gradient to
the local dx, and accumulates the travelling block's dy, which travels with the block and
comes home at the end. Per-device memory is the local embeddings, their gradients, the
travelling block and one [b, tile] tile, whatever the global batch. `scale` and `bias`
get exact gradients (psum'd over the ring).

Positives are given by integer group ids (default: the global row index, i.e. the
diagonal) and `weight_fn` (see losses/targets.py), evaluated tile by tile.
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from xmodal.losses import targets

BATCH_AXES = ("data", "fsdp")


def _matmul_t(a, b):
  """a [r, D] @ b[c, D].T with float32 accumulation -> [r, c] float32."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _matmul(a, b):
  """a [r, c] @ b [c, D] with float32 accumulation."""
  return lax.dot_general(a, b.astype(jnp.float32) if a.dtype != b.dtype else b,
                         (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _pad_rows(a, rows, value=0):
  pad = rows - a.shape[0]
  if pad == 0:
    return a
  return jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1), constant_values=value)


def _tile(a, k, tile):
  return lax.dynamic_slice_in_dim(a, k * tile, tile, axis=0)


def _put(a, k, tile, value):
  return lax.dynamic_update_slice_in_dim(a, value, k * tile, axis=0)


def _ring(n, axes, body, local, travelling, homeward=None):
  """Runs body(local, travelling) -> (local, travelling) once per device of the ring,
  shifting `travelling` one device along after each step, so every block ends up home.
  With `homeward` (indices into `travelling`), the last step is peeled off the loop and
  only those components (what was accumulated into the block) make the final hop; the
  others (the embeddings themselves) are not sent again."""
  perm = [(i, (i + 1) % n) for i in range(n)]
  shift = lambda tree: jax.tree.map(lambda a: lax.ppermute(a, axes, perm), tree)

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
  """Static sizes of one device's work: b local rows, tiles of `tile` columns."""

  def __init__(self, b, tile_size):
    self.b = b
    self.tile = max(1, min(tile_size, b))
    self.num_tiles = -(-b // self.tile)
    self.padded = self.num_tiles * self.tile

  def valid(self, k):
    return (k * self.tile + jnp.arange(self.tile)) < self.b


# ---------------------------------------------------------------------------- softmax

def _softmax_fwd_device(x, y, ids, scale, bias, *, n, axes, geo, weight_fn, batch):
  del bias
  b, tile = geo.b, geo.tile
  f32 = jnp.float32
  neg_inf = jnp.full((b,), -jnp.inf, f32)
  zeros = jnp.zeros((b,), f32)
  rows = (neg_inf, zeros, zeros, zeros)      # running max, sum exp, sum w, sum w*s (x rows)
  pneg = jnp.full((geo.padded,), -jnp.inf, f32)
  pzero = jnp.zeros((geo.padded,), f32)
  travelling = (_pad_rows(y, geo.padded), _pad_rows(ids, geo.padded), pneg, pzero, pzero, pzero)

  def tile_step(k, carry):
    (rm, rs, rw, rws), (yb, ib, cm, cs, cw, cws) = carry
    valid = geo.valid(k)[None, :]
    s = scale * _matmul_t(x, _tile(yb, k, tile))                    # [b, tile]
    w = jnp.where(valid, weight_fn(ids, _tile(ib, k, tile)), 0.0)
    # x -> y: this tile's columns extend each local row's log-sum-exp.
    sm = jnp.where(valid, s, -jnp.inf)
    new_m = jnp.maximum(rm, sm.max(axis=1))
    rs = rs * jnp.exp(rm - new_m) + jnp.exp(sm - new_m[:, None]).sum(axis=1)
    rw, rws = rw + w.sum(axis=1), rws + (w * s).sum(axis=1)
    # y -> x: every local row extends the travelling columns' log-sum-exp.
    tm = s.max(axis=0)
    ts = jnp.exp(s - tm[None, :]).sum(axis=0)
    om, os_ = _tile(cm, k, tile), _tile(cs, k, tile)
    nm = jnp.maximum(om, tm)
    ns = os_ * jnp.exp(om - nm) + ts * jnp.exp(tm - nm)
    cm, cs = _put(cm, k, tile, nm), _put(cs, k, tile, ns)
    cw = _put(cw, k, tile, _tile(cw, k, tile) + w.sum(axis=0))
    cws = _put(cws, k, tile, _tile(cws, k, tile) + (w * s).sum(axis=0))
    return (new_m, rs, rw, rws), (yb, ib, cm, cs, cw, cws)

  def body(rows, travelling):
    return lax.fori_loop(0, geo.num_tiles, tile_step, (rows, travelling))

  (rm, rs, rw, rws), (_, _, cm, cs, cw, cws) = _ring(n, axes, body, rows, travelling,
                                                       homeward=(2, 3, 4, 5))
  # lse - positive as (max - positive) + log sum exp(s - max), and the max kept apart from
  # the log-sum in the saved statistics: a confident row's positive is its max, so its term
  # and its probability exp(s - max - log_sum) carry no rounding of a large lse.
  row_ls = jnp.log(rs)
  cm, col_ls, cw, cws = cm[:b], jnp.log(cs)[:b], cw[:b], cws[:b]
  total = (jnp.sum(rm - rws / jnp.maximum(rw, 1e-30) + row_ls)
           + jnp.sum(cm - cws / jnp.maximum(cw, 1e-30) + col_ls))
  loss = lax.psum(0.5 * total, axes) / batch
  return loss, (rm, row_ls, rw, cm, col_ls, cw)


def _softmax_bwd_device(x, y, ids, scale, bias, stats, g, *, n, axes, geo, weight_fn, batch):
  del bias
  row_m, row_ls, row_w, col_m, col_ls, col_w = stats
  tile = geo.tile
  coef = g / (2 * batch)
  row_w = jnp.maximum(row_w, 1e-30)
  local = (jnp.zeros(x.shape, jnp.float32), jnp.zeros((), jnp.float32))   # dx, dscale
  travelling = (_pad_rows(y, geo.padded), _pad_rows(ids, geo.padded),
                _pad_rows(col_m, geo.padded), _pad_rows(col_ls, geo.padded),
                _pad_rows(jnp.maximum(col_w, 1e-30), geo.padded, 1.0),
                jnp.zeros((geo.padded, y.shape[1]), jnp.float32))          # ..., dy

  def tile_step(k, carry):
    (dx, dscale), (yb, ib, cm, cls, cw, dy) = carry
    valid = geo.valid(k)[None, :]
    yt = _tile(yb, k, tile)
    dots = _matmul_t(x, yt)
    s = scale * dots
    w = weight_fn(ids, _tile(ib, k, tile))
    p_row = jnp.exp((s - row_m[:, None]) - row_ls[:, None])
    p_col = jnp.exp((s - _tile(cm, k, tile)[None, :]) - _tile(cls, k, tile)[None, :])
    grad = p_row + p_col - w / row_w[:, None] - w / _tile(cw, k, tile)[None, :]
    grad = jnp.where(valid, coef * grad, 0.0)                       # dL/ds  [b, tile]
    dx = dx + scale * _matmul(grad, yt)
    dy = _put(dy, k, tile, _tile(dy, k, tile) + scale * _matmul(grad.T, x))
    dscale = dscale + jnp.sum(grad * dots)
    return (dx, dscale), (yb, ib, cm, cls, cw, dy)

  def body(local, travelling):
    return lax.fori_loop(0, geo.num_tiles, tile_step, (local, travelling))

  (dx, dscale), travelling = _ring(n, axes, body, local, travelling, homeward=(5,))
  dy = travelling[-1][:geo.b]
  return dx, dy, lax.psum(dscale, axes), jnp.zeros((), jnp.float32)


# ---------------------------------------------------------------------------- sigmoid

def _sigmoid_fwd_device(x, y, ids, scale, bias, *, n, axes, geo, weight_fn, batch):
  tile = geo.tile
  travelling = (_pad_rows(y, geo.padded), _pad_rows(ids, geo.padded))

  def tile_step(k, carry):
    total, (yb, ib) = carry
    valid = geo.valid(k)[None, :]
    logits = scale * _matmul_t(x, _tile(yb, k, tile)) + bias
    w = weight_fn(ids, _tile(ib, k, tile))
    terms = jax.nn.softplus(logits) - w * logits
    return total + jnp.sum(jnp.where(valid, terms, 0.0)), (yb, ib)

  def body(total, travelling):
    return lax.fori_loop(0, geo.num_tiles, tile_step, (total, travelling))

  # Not peeled: nothing comes home, but on XLA:CPU the peeled variant holds one more
  # [b, D] block (measured), so the last, unneeded hop of y is the cheaper price.
  total, _ = _ring(n, axes, body, jnp.zeros((), jnp.float32), travelling)
  return lax.psum(total, axes) / batch, ()


def _sigmoid_bwd_device(x, y, ids, scale, bias, stats, g, *, n, axes, geo, weight_fn, batch):
  del stats
  tile = geo.tile
  coef = g / batch
  local = (jnp.zeros(x.shape, jnp.float32), jnp.zeros((), jnp.float32),
           jnp.zeros((), jnp.float32))                                     # dx, dscale, dbias
  travelling = (_pad_rows(y, geo.padded), _pad_rows(ids, geo.padded),
                jnp.zeros((geo.padded, y.shape[1]), jnp.float32))          # y, ids, dy

  def tile_step(k, carry):
    (dx, dscale, dbias), (yb, ib, dy) = carry
    valid = geo.valid(k)[None, :]
    yt = _tile(yb, k, tile)
    dots = _matmul_t(x, yt)
    logits = scale * dots + bias
    w = weight_fn(ids, _tile(ib, k, tile))
    grad = jnp.where(valid, coef * (jax.nn.sigmoid(logits) - w), 0.0)   # dL/dlogits
    dx = dx + scale * _matmul(grad, yt)
    dy = _put(dy, k, tile, _tile(dy, k, tile) + scale * _matmul(grad.T, x))
    return (dx, dscale + jnp.sum(grad * dots), dbias + jnp.sum(grad)), (yb, ib, dy)

  def body(local, travelling):
    return lax.fori_loop(0, geo.num_tiles, tile_step, (local, travelling))

  (dx, dscale, dbias), travelling = _ring(n, axes, body, local, travelling,
                                           homeward=(2,))
  return dx, travelling[-1][:geo.b], lax.psum(dscale, axes), lax.psum(dbias, axes)


KERNELS = {"softmax": (_softmax_fwd_device, _softmax_bwd_device, 6),
           "sigmoid": (_sigmoid_fwd_device, _sigmoid_bwd_device, 0)}


# ---------------------------------------------------------------------------- public

def ring_loss(name: str, mesh, tile_size: int = 256, axes=BATCH_AXES,
              weight_fn: Callable = targets.same_id) -> Callable:
  """Returns f(x, y, scale, bias, ids=None) -> scalar mean loss over the global batch.

  x, y [B, D] are split over `axes` of `mesh` (the batch axes present in it); ids [B] int
  group ids (None: every row is its own group, the usual diagonal positives). Equal to
  `dense_loss` (and `targets.dense_loss_with_ids`) in value and in gradients w.r.t. x, y,
  scale and bias.
  """
  if name not in KERNELS:
    raise ValueError(f"config.loss.name: unknown loss {name!r}")
  if tile_size < 1:
    raise ValueError(f"config.loss.tile_size: must be > 0, got {tile_size}")
  fwd_device, bwd_device, num_stats = KERNELS[name]
  axes = tuple(a for a in axes if a in mesh.axis_names)
  n = math.prod(mesh.shape[a] for a in axes)
  spec = P(axes)

  def kwargs(batch):
    geo = _Geometry(batch // n, tile_size)
    return dict(n=n, axes=axes, geo=geo, weight_fn=weight_fn, batch=batch)

  def forward(x, y, scale, bias, ids):
    f = functools.partial(fwd_device, **kwargs(x.shape[0]))
    return jax.shard_map(f, mesh=mesh, in_specs=(spec, spec, spec, P(), P()),
                         out_specs=(P(), (spec,) * num_stats), check_vma=False)(
                             x, y, ids, scale, bias)

  @jax.custom_vjp
  def loss(x, y, scale, bias, ids):
    return forward(x, y, scale, bias, ids)[0]

  def loss_fwd(x, y, scale, bias, ids):
    value, stats = forward(x, y, scale, bias, ids)
    return value, (x, y, scale, bias, ids, stats)

  def loss_bwd(res, g):
    x, y, scale, bias, ids, stats = res
    f = functools.partial(bwd_device, **kwargs(x.shape[0]))
    dx, dy, dscale, dbias = jax.shard_map(
        f, mesh=mesh, in_specs=(spec, spec, spec, P(), P(), (spec,) * num_stats, P()),
        out_specs=(spec, spec, P(), P()), check_vma=False)(x, y, ids, scale, bias, stats, g)
    return (dx.astype(x.dtype), dy.astype(y.dtype), dscale.astype(scale.dtype),
            dbias.astype(bias.dtype), None)

  loss.defvjp(loss_fwd, loss_bwd)

  def f(x, y, scale, bias=0.0, ids=None):
    batch = x.shape[0]
    if batch % n:
      raise ValueError(f"ring loss: global batch {batch} is not divisible by the {n} devices "
                       f"of mesh axes {axes}")
    ids = jnp.arange(batch, dtype=jnp.int32) if ids is None else jnp.asarray(ids)
    scale = jnp.asarray(scale, jnp.float32)
    bias = jnp.asarray(bias, jnp.float32)
    return loss(x, y, scale, bias, ids)

  return f
