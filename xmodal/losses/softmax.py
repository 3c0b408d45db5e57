"""Symmetric softmax contrastive loss (CLIP / InfoNCE).

For unit embeddings x, y [B, D] and scale t, the logits are t * x @ y.T; row i's positive is
column i. The loss is the mean over rows of the two cross-entropies (x->y and y->x), halved:

    L = 1/(2B) * sum_i [ lse_j(t x_i.y_j) - t x_i.y_i + lse_j(t y_i.x_j) - t y_i.x_i ]

`row_sum` scores a device's local rows against every row gathered from the mesh; the
caller divides the mesh-wide sum by the global batch (see losses/__init__.py).
"""

import jax
import jax.numpy as jnp


def cross_entropy(logits, positive):
  """logits [b, B], positive [b] (each row's target logit, read off `logits`) -> [b]
  lse(logits) - positive, as (max - positive) + log sum exp(logits - max): when the positive
  is the row's maximum the first term is exactly 0, so a confident row's small loss is not
  the difference of two large, rounded numbers."""
  top = jax.lax.stop_gradient(logits.max(axis=1))   # cancels out of the value: no gradient
  return (top - positive) + jnp.log(jnp.exp(logits - top[:, None]).sum(axis=1))


def _one_direction(x, y_all, offset, scale):
  """x [b, D] local rows, y_all [B, D]; positives at columns offset..offset+b. -> scalar sum."""
  logits = scale * (x @ y_all.T)
  positives = jnp.diagonal(jax.lax.dynamic_slice_in_dim(logits, offset, x.shape[0], axis=1))
  return jnp.sum(cross_entropy(logits, positives))


def row_sum(x, y, x_all, y_all, offset, scale, bias):
  """Sum over the local rows of both directions' cross-entropy, halved. bias is unused."""
  del bias
  return 0.5 * (_one_direction(x, y_all, offset, scale) + _one_direction(y, x_all, offset, scale))


NEEDS_GATHERED_X = True   # the y->x direction scores local y rows against every x
