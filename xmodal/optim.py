"""Optimizer: AdamW with linear warmup + cosine decay, global-norm clipping, weight decay
masked off norms, biases and the loss scalars (every parameter with fewer than two
dimensions), and the learned scale kept at most `loss.max_scale`, as in CLIP and open_clip."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmodal.config import ConfigError

FROZEN, TRAINABLE = "frozen", "trainable"


def param_names(params) -> list[str]:
  """Flattened names "image/encoder/transformer/block_0/mlp/fc1/kernel" of a params tree."""
  return ["/".join(str(getattr(k, "key", k)) for k in path)
          for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def frozen_labels(config):
  """A function params -> tree of "frozen"/"trainable" labels from config.train.frozen and
  config.train.unfrozen (regexes, full match). Raises ConfigError naming any pattern that
  matches no parameter."""
  frozen, unfrozen = tuple(config.train.frozen), tuple(config.train.unfrozen)

  def labels(params):
    names = param_names(params)
    for field, patterns in (("frozen", frozen), ("unfrozen", unfrozen)):
      for pattern in patterns:
        if not any(re.fullmatch(pattern, n) for n in names):
          raise ConfigError(
              f"config.train.{field}: pattern {pattern!r} matches no parameter; names look "
              f"like {names[:3]}")
    def label(name):
      if any(re.fullmatch(p, name) for p in frozen) and not any(
          re.fullmatch(p, name) for p in unfrozen):
        return FROZEN
      return TRAINABLE
    leaves = [label(n) for n in names]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)

  return labels


def schedule(config) -> optax.Schedule:
  o = config.optim
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps,
      decay_steps=config.train.total_steps, end_value=o.lr * o.end_lr_fraction)


def decay_mask(params):
  """True for the leaves weight decay applies to: matrices and embeddings (ndim >= 2)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW (+ clipping) over the trainable params; frozen ones (config.train.frozen) get
  zero updates and keep no optimizer moments."""
  tx = _adamw(config)
  if not config.train.get("frozen"):
    return tx
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                               frozen_labels(config))


def clamp_scale(max_scale: float) -> optax.GradientTransformation:
  """The last link of the chain: an update that would take the top-level `logit_scale`
  above log(max_scale) stops it there, so the parameter after the step is clamped, as
  open_clip clamps it after each optimizer step. The loss uses the parameter as it is (no
  clip in the forward pass: the logged scale is the loss's, and the gradient at the bound is
  whole). A frozen scale is masked out of the chain and never touched.

  Exact: p + (min(p + u, bound) - p) is bound itself when clamped and p + u otherwise
  (both differences are exact in float32 for |u| < |p|)."""
  bound = np.float32(np.log(np.float64(max_scale)))   # the same float32 as the parameter

  def update(updates, state, params=None):
    u = updates.get("logit_scale") if isinstance(updates, dict) else None
    if u is None or isinstance(u, optax.MaskedNode):
      return updates, state
    if params is None:
      raise ValueError("clamp_scale needs the params in tx.update(grads, state, params)")
    p = params["logit_scale"]
    return {**updates, "logit_scale": jnp.minimum(p + u, bound) - p}, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _adamw(config) -> optax.GradientTransformation:
  o = config.optim
  parts = []
  if o.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  parts.append(optax.adamw(schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay, mask=decay_mask))
  parts.append(clamp_scale(config.loss.max_scale))
  return optax.chain(*parts)
