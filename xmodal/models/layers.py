"""Transformer building blocks shared by every tower (pre-LayerNorm encoder).

Attention projects with 2-D `Dense` layers and reshapes (rather than `DenseGeneral`) so that
logical sharding annotations stay two-dimensional, and calls `jax.nn.dot_product_attention`,
which picks cuDNN flash attention on GPUs and plain XLA elsewhere.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class Mlp(nn.Module):
  """x [B, L, D] -> [B, L, D] through a GELU hidden layer of `hidden` units."""
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x)
    return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


class SelfAttention(nn.Module):
  """Multi-head self-attention. x [B, L, D], mask [B, L] bool (True = real token) or None."""
  num_heads: int
  causal: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    batch, length, width = x.shape
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    attn_mask = None if mask is None else mask[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=attn_mask, is_causal=self.causal)
    return nn.Dense(width, dtype=self.dtype, name="out")(out.reshape(batch, length, width))


class EncoderBlock(nn.Module):
  """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x)). Shapes [B, L, D] -> [B, L, D]."""
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
    x = x + SelfAttention(self.num_heads, self.causal, self.dtype, name="attn")(y, mask)
    y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
    return x + Mlp(int(self.mlp_ratio * x.shape[-1]), self.dtype, name="mlp")(y)


class Encoder(nn.Module):
  """`depth` EncoderBlocks and a final LayerNorm. [B, L, D] -> [B, L, D]."""
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_ratio, self.causal, self.dtype,
                       name=f"block_{i}")(x, mask)
    return nn.LayerNorm(dtype=self.dtype, name="ln_final")(x)
