"""The two loss families every objective belongs to: their dense formula, their streaming
statistics over tiles of columns, and their gradient w.r.t. the scores.

softmax (cross-entropy against a target distribution). Row i of a score matrix S [r, c]
(scores of row i against every column) has a target given as components k, each a
nonnegative weight row w_ik. (linear, `Target(alpha, w=...)`: one-hot, group ids, CWCL's
weights, uniform) or log-weights l_ik. (`Target(alpha, logw=...)`: a teacher's logits / its
temperature), normalised over the row, and a mass alpha_ik:

    loss_i = sum_k alpha_ik * (lse_j S_ij - sum_j q_ijk S_ij),   q_ik. = w_ik. / sum_j w_ijk
                                                                 (or softmax_j l_ijk)
    dloss_i / dS_ij = M_i softmax_j(S_i.)_j - sum_k alpha_ik q_ijk,   M_i = sum_k alpha_ik

Cross-entropy is linear in the target, so a mixture (label smoothing, momentum
distillation's alpha * teacher + (1 - alpha) * one-hot, an ensemble of teachers) is a list
of components. The value is computed as sum_k alpha_k (m - A_k / Z_k) + M log sum_j
exp(S_ij - m), m = max_j S_ij, A_k = sum_j w S, Z_k = sum_j w: when a one-hot positive is
its row's maximum the first term is exactly 0, so a confident row's small loss is not the
difference of two large rounded numbers (scale 100: the float64 loss to 1e-5).

Streamed over tiles of columns, each row keeps O(1) numbers per component: the running max
m and normaliser l of its scores, and per component the running sums Z and A (and, for
log-weights, their running max). `axis` says which way the tile is reduced: 1 for rows
(x -> y), 0 for columns (y -> x: the column's statistics travel with it).

sigmoid (binary cross-entropy per pair): with labels w_ij in [0, 1],

    term_ij = -w log sigmoid(S_ij) - (1 - w) log sigmoid(-S_ij)
            = softplus(-|S|) + w max(-S, 0) + (1 - w) max(S, 0)     (each pair exact)
    dterm / dS = sigmoid(S) - w
"""

import dataclasses

import jax
import jax.numpy as jnp

SOFTMAX, SIGMOID = "softmax", "sigmoid"


@dataclasses.dataclass
class Target:
  """One component of a softmax target: a mass `alpha` (a float or an array over the
  direction's rows, [r] for rows, [c] for columns) times a distribution given by
  nonnegative weights `w` [r, c] or log-weights `logw` [r, c] (-inf = weight 0),
  normalised along the direction."""
  alpha: object
  w: object = None
  logw: object = None


jax.tree_util.register_dataclass(Target, data_fields=["alpha", "w", "logw"], meta_fields=[])


def _reduce_shape(shape, axis):
  return (shape[1 - axis],)


def _alpha(t: Target, n):
  return jnp.broadcast_to(jnp.asarray(t.alpha, jnp.float32), (n,))


def _expand(v, axis):
  """[n] statistics of the direction -> broadcastable against the [r, c] tile."""
  return v[:, None] if axis == 1 else v[None, :]


def _masked(a, valid, fill):
  return a if valid is None else jnp.where(valid, a, fill)


# ----------------------------------------------------------------------------- softmax dense

def softmax_dense(s, targets, axis: int, valid=None):
  """Per-direction losses [n] of scores s [r, c] (n = r for axis=1, c for axis=0) against
  `targets` (list of Target), with `valid` [1, c] (or [r, c]) masking columns out of the
  normaliser and the targets. The reference formula: differentiable by JAX."""
  s = _masked(s, valid, -jnp.inf)
  top = jnp.max(s, axis=axis)                # cancels out of the value, not of the gradient
  shifted = s - _expand(top, axis)
  log_norm = jnp.log1p(_tail(s, top, axis, fused=False))
  n = top.shape[0]
  mass, pos = jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32)
  safe = _masked(shifted, valid, 0.0)
  for t in targets:
    q = _distribution(t, axis, valid)
    alpha = _alpha(t, n)
    mass = mass + alpha
    pos = pos + alpha * jnp.sum(q * safe, axis=axis)        # = sum_k alpha (A/Z - m)
  return mass * log_norm - pos


def _tail(s, top, axis, fused=True):
  """sum_j exp(s_j - top) - 1 along `axis`, without forming the 1: the terms below the max
  plus the count of further ties at the max. log1p of it is the log-normaliser below the
  max, exact when the max dominates (a confident row's loss ~1e-6 keeps its digits)."""
  at_top = s == _expand(top, axis)
  below = jnp.where(at_top, 0.0, jnp.exp(s - _expand(_safe(top), axis)))
  if not fused:                        # differentiable by JAX (the dense formula)
    return jnp.sum(below, axis=axis) + (jnp.sum(at_top, axis=axis) - 1)
  total, ties = _sums(below, at_top.astype(jnp.float32), axis)
  return total + (ties - 1)


def _sums(a, b, axis):
  """(sum a, sum b) along `axis` as one variadic reduction: XLA:CPU then makes one fusion
  of it and its producers instead of materialising each [r, c] operand (measured: one
  [b, tile] buffer less per pair in the ring's temp memory). Not differentiable by JAX:
  for the streamed statistics, which custom VJPs differentiate."""
  return jax.lax.reduce((a, b), (jnp.float32(0), jnp.float32(0)),
                        lambda x, y: (x[0] + y[0], x[1] + y[1]), (axis,))


def _distribution(t: Target, axis, valid):
  if t.w is not None:
    w = _masked(t.w, valid, 0.0)
    return w / jnp.maximum(jnp.sum(w, axis=axis, keepdims=True), 1e-30)
  logw = _masked(t.logw, valid, -jnp.inf)
  top = jnp.max(logw, axis=axis, keepdims=True)
  e = jnp.exp(logw - jnp.where(jnp.isfinite(top), top, 0.0))
  return e / jnp.maximum(jnp.sum(e, axis=axis, keepdims=True), 1e-30)


# ----------------------------------------------------------------------------- softmax tiles

def softmax_init(n, targets_like):
  """Statistics of n rows (or columns) before any tile: a pytree of [n] arrays."""
  comps = []
  for t in targets_like:
    c = {"z": jnp.zeros((n,), jnp.float32), "a": jnp.zeros((n,), jnp.float32)}
    if t.logw is not None:
      c["top"] = jnp.full((n,), -jnp.inf, jnp.float32)
    comps.append(c)
  # m: running max; l: running sum of exp(s - m) minus one (the max's own term), see _tail.
  return {"m": jnp.full((n,), -jnp.inf, jnp.float32), "l": jnp.full((n,), -1.0, jnp.float32),
          "comps": comps}


def _safe(top):
  return jnp.where(jnp.isfinite(top), top, 0.0)


def softmax_update(stats, s, targets, axis: int, valid=None):
  """Extends the statistics with one tile s [r, c]; `valid` [1, c] masks padded or empty
  columns (only for axis=1: padded columns' own statistics are discarded)."""
  sm = _masked(s, valid, -jnp.inf)
  m, l = stats["m"], stats["l"]
  tm = jnp.max(sm, axis=axis)
  tail = _tail(sm, tm, axis)
  m_new = jnp.maximum(m, tm)
  # A new max: the old terms (l + 1 of them, relative to m) fall below it. Otherwise the
  # tile's terms (its max and its tail) join the tail.
  l_new = jnp.where(tm > m, (l + 1.0) * jnp.exp(m - _safe(tm)) + tail,
                    l + jnp.where(jnp.isfinite(tm), (1.0 + tail) * jnp.exp(tm - _safe(m)), 0.0))
  comps = []
  # Invalid columns get weight 0; their scores are finite (padding and empty queue rows
  # are zero features), so w * s needs no second mask.
  for c, t in zip(stats["comps"], targets):
    if t.w is not None:
      w = _masked(t.w, valid, 0.0)
      z, a = _sums(w, w * s, axis)
      comps.append({"z": c["z"] + z, "a": c["a"] + a})
    else:
      logw = _masked(t.logw, valid, -jnp.inf)
      top = jnp.maximum(c["top"], jnp.max(logw, axis=axis))
      rescale = jnp.exp(c["top"] - _safe(top))
      e = jnp.exp(logw - _expand(_safe(top), axis))
      z, a = _sums(e, e * s, axis)
      comps.append({"top": top, "z": c["z"] * rescale + z, "a": c["a"] * rescale + a})
  return {"m": m_new, "l": l_new, "comps": comps}


def softmax_finish(stats, alphas):
  """Per-direction losses [n] from the final statistics; alphas: each component's mass
  ([n] or scalar). Also returns what the backward pass needs (max, log-normaliser kept
  apart, per component its normaliser and max)."""
  n = stats["m"].shape[0]
  log_norm = jnp.log1p(stats["l"])
  mass = jnp.zeros((n,), jnp.float32)
  pos = jnp.zeros((n,), jnp.float32)
  saved = {"m": stats["m"], "ll": log_norm, "comps": []}
  for c, alpha in zip(stats["comps"], alphas):
    alpha = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (n,))
    z = jnp.maximum(c["z"], 1e-30)
    mass, pos = mass + alpha, pos + alpha * (stats["m"] - c["a"] / z)
    saved["comps"].append({k: v for k, v in (("z", z), ("top", c.get("top"))) if v is not None})
  return pos + mass * log_norm, saved


def softmax_grad(s, targets, saved, axis: int, valid=None):
  """dloss/ds for one tile, from the saved statistics of the direction: [r, c], zero at
  invalid columns. Summed over the direction's rows' losses (not averaged)."""
  n = saved["m"].shape[0]
  d = (s - _expand(saved["m"], axis)) - _expand(saved["ll"], axis)     # log softmax
  mass = jnp.zeros((n,), jnp.float32)
  q = jnp.zeros(s.shape, jnp.float32)
  for t, c in zip(targets, saved["comps"]):
    alpha = _alpha(t, n)
    mass = mass + alpha
    if t.w is not None:
      dist = t.w / _expand(c["z"], axis)
    else:
      dist = jnp.exp(t.logw - _expand(_safe(c["top"]), axis)) / _expand(c["z"], axis)
    q = q + _expand(alpha, axis) * dist
  mass = _expand(mass, axis)
  # At the row's max, M p - q as M expm1(d) + (M - q): a confident positive's gradient
  # (p ~ 1, q = 1) keeps its digits instead of being 1 - 1 + rounding.
  top = s == _expand(saved["m"], axis)
  grad = jnp.where(top, mass * jnp.expm1(d) + (mass - q), mass * jnp.exp(d) - q)
  return _masked(grad, valid, 0.0)


# ----------------------------------------------------------------------------- sigmoid

def sigmoid_terms(s, w):
  """Per-pair binary cross-entropy [r, c], each pair by its own terms (see the module
  docstring): no softplus(l) - l cancellation when |l| is large."""
  return jax.nn.softplus(-jnp.abs(s)) + w * jnp.maximum(-s, 0.0) + (1 - w) * jnp.maximum(s, 0.0)


def sigmoid_dense(s, w, valid=None):
  """Sum of the pair terms of s [r, c] with labels w [r, c]."""
  return jnp.sum(_masked(sigmoid_terms(s, w), valid, 0.0))


def sigmoid_grad(s, w, valid=None):
  return _masked(jax.nn.sigmoid(s) - w, valid, 0.0)
