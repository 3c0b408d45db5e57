"""Micro-batched loss and gradient (GradCache): a contrastive batch larger than the
towers' activations allow, with exactly the full-batch gradient.

`config.train.microbatches = K` splits every device's rows into K micro-batches. Then:

  1. embed: a `lax.map` over the K micro-batches runs the towers forward only, so no
     activation is kept; the embeddings of the whole global batch are assembled ([B, D]
     per modality, a few MB even at large B).
  2. loss: the objective and its gradient w.r.t. every embedding (and the loss's own
     params, `logit_scale` / `logit_bias`) are computed once, over the full global batch:
     every row still sees all B - 1 negatives.
  3. back-propagate: a `lax.scan` over the micro-batches recomputes each one's forward
     under `jax.vjp` and pulls its slice of the embedding gradient back to the params,
     summing. Only one micro-batch's activations are alive at a time.

The parameter gradient equals the full-batch one up to float summation order; the cost
is one extra forward of the towers.

Micro-batch k takes rows k, k + K, k + 2K, ... of the global batch (a reshape [B, ...] ->
[B/K, K, ...] and a slice of the unsharded K axis), so when the batch is split over the
devices in contiguous blocks whose size K divides, every device takes its own rows:
no data moves between devices.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def split(tree, k: int):
  """{m: [B, ...]} -> {m: [K, B/K, ...]}; micro-batch j holds rows j, j + K, ..."""
  def one(a):
    a = a.reshape((a.shape[0] // k, k) + a.shape[1:])
    return jnp.moveaxis(a, 1, 0)
  return jax.tree.map(one, tree)


def merge(tree):
  """Inverse of `split`: {m: [K, B/K, ...]} -> {m: [B, ...]} in the original row order."""
  def one(a):
    a = jnp.moveaxis(a, 0, 1)
    return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
  return jax.tree.map(one, tree)


def embed(model, params, inputs, microbatches: int = 1):
  """The towers' embeddings of `inputs` {modality: [B, ...]} in eval mode, without
  gradient, one micro-batch's activations at a time: {modality: [B, ...]} (frozen
  teachers, EMA copies)."""
  params = lax.stop_gradient(params)
  if microbatches == 1:
    return model.apply({"params": params}, inputs)
  chunks = split(inputs, microbatches)
  return merge(lax.map(lambda c: model.apply({"params": params}, c), chunks))


def value_and_grad(model, objective: Callable, microbatches: int) -> Callable:
  """Returns f(params, batch, rng=None, extras=None) -> ((loss, aux), grads), like
  `jax.value_and_grad(lambda p: objective(p, model.apply({"params": p}, batch), extras),
  has_aux=True)`, but holding one micro-batch's activations at a time. With `rng`, the
  towers run in train mode and micro-batch k draws its randomness (patch dropout) from
  split(rng)[k], the same key in its forward and in its recomputation. `extras` (group
  ids [B], teachers' embeddings, ...: whatever the objective takes) go to the objective
  with the assembled full-batch embeddings, which are in the batch's row order, so they
  need no splitting."""

  def embed(params, inputs, rng):
    if rng is None:
      return model.apply({"params": params}, inputs)
    return model.apply({"params": params}, inputs, train=True, rngs={"dropout": rng})

  def f(params, batch, rng=None, extras=None):
    chunks = split(batch, microbatches)
    keys = None if rng is None else jax.random.split(rng, microbatches)
    # 1. Forward only: nothing is differentiated here, so no activations are saved.
    embeddings = merge(lax.map(lambda c: embed(params, c[0], c[1]), (chunks, keys)))
    # 2. The loss over the full global batch, and its gradient w.r.t. every embedding.
    (loss, aux), (loss_param_grads, emb_grads) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True)(params, embeddings, extras)
    emb_grads = split(emb_grads, microbatches)

    # 3. Recompute each micro-batch's forward and pull its embedding gradient back.
    def backprop(acc, chunk_grad_key):
      chunk, grad, key = chunk_grad_key
      _, pull = jax.vjp(lambda p: embed(p, chunk, key), params)
      (g,) = pull(grad)
      return jax.tree.map(jnp.add, acc, g), None

    grads, _ = lax.scan(backprop, loss_param_grads, (chunks, emb_grads, keys))
    return (loss, aux), grads

  return f
