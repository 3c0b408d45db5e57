"""Transformer text tower.

int32 token ids [B, L] (0 = padding) -> token + learned position embeddings -> Encoder
(causal as in CLIP, or bidirectional) -> pooled [B, width]: "eot" takes the last real token
(where the tokenizer puts EOS), "mean" averages real tokens, "first" takes position 0.
"""

import flax.linen as nn
import jax.numpy as jnp

from xmodal.models import layers


class TextTransformer(nn.Module):
  vocab_size: int
  context_length: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = True
  pool: str = "eot"
  pad_id: int = 0
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    """tokens: int32 [B, L] with L <= context_length. Returns features [B, width]."""
    batch, length = tokens.shape
    if length > self.context_length:
      raise ValueError(f"text tokens have length {length} > context_length {self.context_length}")
    mask = tokens != self.pad_id
    x = nn.Embed(self.vocab_size, self.width, name="token_embed",
                 embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                             ("vocab", "embed")))(tokens)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.01), (None, None, "embed")), (1, self.context_length, self.width))
    x = (x + pos[:, :length]).astype(self.dtype)
    # A causal mask already hides padding that follows the text; padding keys are masked
    # explicitly for bidirectional attention.
    x = layers.Encoder(self.depth, self.num_heads, self.mlp_ratio, self.causal, self.dtype,
                       name="transformer")(x, None if self.causal else mask)
    if self.pool == "eot":
      last = jnp.maximum(mask.sum(axis=1) - 1, 0)
      return x[jnp.arange(batch), last]
    if self.pool == "mean":
      weights = mask.astype(x.dtype)[..., None]
      return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)
    return x[:, 0]
