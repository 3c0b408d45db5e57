"""Optimizer: AdamW with linear warmup + cosine decay, global-norm clipping, and weight
decay masked off norms, biases and the loss scalars (every parameter with fewer than two
dimensions), as in CLIP and open_clip."""

import jax
import optax


def schedule(config) -> optax.Schedule:
  o = config.optim
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps,
      decay_steps=config.train.total_steps, end_value=o.lr * o.end_lr_fraction)


def decay_mask(params):
  """True for the leaves weight decay applies to: matrices and embeddings (ndim >= 2)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  parts = []
  if o.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  parts.append(optax.adamw(schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
