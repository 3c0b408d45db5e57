"""Transformer building blocks shared by every tower (pre-LayerNorm encoder).

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `vocab`, `norm`, ...);
`config.sharding.rules` maps them to mesh axes (see xmodal/sharding.py). Activations are
constrained to `("batch", "length", "act_embed")` between blocks so the compiler keeps
the batch split over data x fsdp and gathers parameters (FSDP) rather than activations.

Attention projects with 2-D `Dense` layers and reshapes (rather than `DenseGeneral`) so that
logical sharding annotations stay two-dimensional, and calls `jax.nn.dot_product_attention`,
which picks cuDNN flash attention on GPUs and plain XLA elsewhere.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def dense(features: int, axes: tuple[str, str], dtype, name: str, use_bias: bool = True):
  """nn.Dense whose kernel [in, out] has logical axes `axes` and bias [out] `axes[1]`."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


def layer_norm(dtype, name: str):
  return nn.LayerNorm(dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def constrain(x):
  """Keeps [B, L, D] activations split over the batch axes (a no-op without a mesh)."""
  return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class Mlp(nn.Module):
  """x [B, L, D] -> [B, L, D] through a GELU hidden layer of `hidden` units."""
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x)
    x = nn.gelu(x)
    return dense(width, ("mlp", "embed"), self.dtype, "fc2")(x)


class SelfAttention(nn.Module):
  """Multi-head self-attention. x [B, L, D], mask [B, L] bool (True = real token) or None."""
  num_heads: int
  causal: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    batch, length, width = x.shape
    head_dim = width // self.num_heads
    qkv = dense(3 * width, ("embed", "heads"), self.dtype, "qkv")(x)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    attn_mask = None if mask is None else mask[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=attn_mask, is_causal=self.causal)
    return dense(width, ("heads", "embed"), self.dtype, "out")(out.reshape(batch, length, width))


class EncoderBlock(nn.Module):
  """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x)). Shapes [B, L, D] -> [B, L, D]."""
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    y = layer_norm(self.dtype, "ln1")(x)
    x = x + SelfAttention(self.num_heads, self.causal, self.dtype, name="attn")(y, mask)
    y = layer_norm(self.dtype, "ln2")(x)
    return constrain(x + Mlp(int(self.mlp_ratio * x.shape[-1]), self.dtype, name="mlp")(y))


class Encoder(nn.Module):
  """`depth` EncoderBlocks and a final LayerNorm. [B, L, D] -> [B, L, D]."""
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    x = constrain(x)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_ratio, self.causal, self.dtype,
                       name=f"block_{i}")(x, mask)
    return layer_norm(self.dtype, "ln_final")(x)
