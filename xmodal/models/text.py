"""Transformer text tower.

int32 token ids [B, L] laid out as the tokenizers write them, [prefix..., text..., EOS,
PAD, ...] -> token + learned position embeddings (+ the first token-type embedding when
`type_vocab_size` > 0, BERT) -> optional LayerNorm (`pre_norm`, BERT's embedding
LayerNorm) -> Encoder (causal as in CLIP, or bidirectional; pre-LN, or post-LN as in BERT)
-> pooled [B, width].

Padding is the run of `pad_id` at the end of a row: a `pad_id` followed by any other id is
a real token (CLIP pads with 0, which is also "!"). Bidirectional attention masks the
padding keys and "mean" ignores them; causal attention needs no mask (padding follows).
  "eot"    the last real token: EOS for every xmodal tokenizer (CLIP's EOT, BERT's [SEP]);
  "argmax" the position of the highest token id (CLIP / open_clip: EOT has the top id);
  "last"   position L-1 whatever it holds (SigLIP, which pads to a fixed length);
  "mean"   the mean over real tokens (sentence-transformers);
  "first"  position 0 (BERT's [CLS]; CLIP's SOT).
"""

import flax.linen as nn
import jax
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
  mlp_dim: int = 0
  act: str = "gelu_tanh"
  norm_first: bool = True
  pre_norm: bool = False
  final_norm: bool = True
  layer_norm_eps: float = 1e-6
  type_vocab_size: int = 0
  remat: str = "none"
  scan: bool = False
  tokens: bool = False               # also return (token features [B, L, width], mask [B, L])

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    """tokens: int32 [B, L] with L <= context_length. Returns features [B, width]."""
    del train
    batch, length = tokens.shape
    if length > self.context_length:
      raise ValueError(f"text tokens have length {length} > context_length {self.context_length}")
    # Real tokens: everything up to the last non-pad id of the row.
    mask = jax.lax.cummax((tokens != self.pad_id).astype(jnp.int32), axis=1, reverse=True) > 0
    x = layers.Embed(self.vocab_size, self.width, name="token_embed")(tokens)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.01), (None, None, "embed")), (1, self.context_length, self.width))
    x = x + pos[:, :length]
    if self.type_vocab_size:
      types = self.param("type_embed", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), (None, "embed")), (self.type_vocab_size, self.width))
      x = x + types[0]       # one segment: every token has type 0
    x = x.astype(self.dtype)
    if self.pre_norm:
      x = layers.layer_norm(self.dtype, "ln_pre", self.layer_norm_eps)(x)
    # A causal mask already hides padding that follows the text; padding keys are masked
    # explicitly for bidirectional attention.
    x = layers.Encoder(self.depth, self.num_heads, self.mlp_ratio, self.causal, self.dtype,
                       act=self.act, norm_first=self.norm_first, eps=self.layer_norm_eps,
                       mlp_dim=self.mlp_dim, final_norm=self.final_norm, remat=self.remat,
                       scan=self.scan, name="transformer")(x, None if self.causal else mask)
    pooled = self._pool(x, tokens, mask)
    if self.tokens:
      return pooled, x, mask.astype(jnp.float32)
    return pooled

  def _pool(self, x, tokens, mask):
    batch = x.shape[0]
    if self.pool == "eot":
      last = jnp.maximum(mask.sum(axis=1) - 1, 0)
      return x[jnp.arange(batch), last]
    if self.pool == "argmax":
      return x[jnp.arange(batch), jnp.argmax(tokens, axis=1)]
    if self.pool == "last":
      return x[:, -1]
    if self.pool == "mean":
      weights = mask.astype(x.dtype)[..., None]
      return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)
    return x[:, 0]
