"""Which pairs are positives: the extension point shared by the dense and tiled losses.

By default row i's only positive is column i (its own pair). With integer group ids
`ids [B]`, every pair whose ids are equal is a positive (several captions of one image,
several views of one object, ...). More generally a `weight_fn(row_ids, col_ids) -> [r, c]`
float in [0, 1] gives per-pair soft targets; it is evaluated tile by tile in the ring
implementation, so it must be a pure function of the two id blocks, and symmetric
(`weight_fn(a, b) == weight_fn(b, a).T`) because the softmax loss uses it in both directions.

With targets w_ij:

  softmax  row i (x->y):   lse_j(S_ij) - sum_j w_ij S_ij / sum_j w_ij    (likewise y->x over
           columns); with w = identity this is the usual cross-entropy, with equal ids it
           is the cross-entropy against the uniform distribution over the row's positives.
  sigmoid  pair (i, j):    softplus(l_ij) - w_ij l_ij = -w log sig(l) - (1 - w) log sig(-l);
           with w in {0, 1} it is the usual SigLIP term.

`row_sum_with_ids` scores a block of local rows against every row (the `gathered`
implementation's per-device work, losses/__init__.py); `dense_loss_with_ids` is it on one
device with the whole [B, B] matrix, the reference for the ring loss (which tests also check
against a brute-force numpy loop).
"""

import jax
import jax.numpy as jnp


def same_id(row_ids, col_ids):
  """Default weight_fn: 1 where the group ids are equal, else 0. -> float32 [r, c]."""
  return (row_ids[:, None] == col_ids[None, :]).astype(jnp.float32)


def _logits(x, y, scale):
  dots = jnp.matmul(x, y.T, preferred_element_type=jnp.float32)
  return scale * dots


def dense_loss_with_ids(name: str, x, y, scale, bias=0.0, ids=None, weight_fn=same_id):
  """Reference on one device: x, y [B, D], ids [B] (None = arange) -> scalar mean loss.
  Every row scored against every row: one block of `row_sum_with_ids`."""
  batch = x.shape[0]
  ids = jnp.arange(batch) if ids is None else ids
  return row_sum_with_ids(name, x, y, x, y, ids, ids, scale, bias, weight_fn) / batch


def row_sum_with_ids(name: str, x, y, x_all, y_all, ids, ids_all, scale, bias=0.0,
                     weight_fn=same_id):
  """Local rows x, y [b, D] with group ids [b] against all rows x_all, y_all [B, D] with
  ids_all [B] -> the scalar sum of the local rows' terms; summed over every block of rows
  and divided by B it is `dense_loss_with_ids`. The softmax's y->x direction scores the
  local y rows against x_all with the same weights (weight_fn is symmetric)."""
  w = weight_fn(ids, ids_all)                                           # [b, B]
  if name == "softmax":
    def direction(s):
      # lse(s) - sum_j w s / sum_j w, with the max taken out first (softmax.cross_entropy):
      # exact 0 for the term of a positive that is its row's maximum.
      top = jax.lax.stop_gradient(s.max(axis=1))
      pos = jnp.sum(w * (s - top[:, None]), axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1e-30)
      return jnp.sum(jnp.log(jnp.exp(s - top[:, None]).sum(axis=1)) - pos)
    return 0.5 * (direction(_logits(x, y_all, scale)) + direction(_logits(y, x_all, scale)))
  if name == "sigmoid":
    # -w log sig(l) - (1 - w) log sig(-l), each pair by its own terms: with w in {0, 1} a
    # single softplus per pair, never softplus(l) - l (which loses float32 digits when l
    # is large).
    logits = _logits(x, y_all, scale) + bias
    return jnp.sum(w * jax.nn.softplus(-logits) + (1 - w) * jax.nn.softplus(logits))
  raise ValueError(f"unknown loss {name!r}")
