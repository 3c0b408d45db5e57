"""Sigmoid contrastive loss (SigLIP).

For unit embeddings x, y [B, D], scale t and bias b, every pair (i, j) is a binary
problem with label z_ij = +1 if i == j else -1:

    L = -1/B * sum_ij log sigmoid(z_ij * (t x_i.y_j + b))

`row_sum` scores a device's local x rows against every y row gathered from the mesh; the
caller divides the mesh-wide sum by the global batch (see losses/__init__.py).
"""

import jax
import jax.numpy as jnp


def row_sum(x, y, x_all, y_all, offset, scale, bias):
  """x [b, D] local rows, y_all [B, D]; positives at columns offset..offset+b. -> scalar sum."""
  del y, x_all
  logits = scale * (x @ y_all.T) + bias
  positives = scale * jnp.sum(x * jax.lax.dynamic_slice_in_dim(y_all, offset, x.shape[0]),
                              axis=1) + bias
  # Every pair as a negative, then swap the diagonal's term for the positive one:
  # -log sig(-l) - (-log sig(l)) corrects each positive pair.
  negatives = -jax.nn.log_sigmoid(-logits).sum()
  correction = jnp.sum(jax.nn.log_sigmoid(-positives) - jax.nn.log_sigmoid(positives))
  return negatives + correction


NEEDS_GATHERED_X = False  # only y is gathered: the matrix covers both directions
