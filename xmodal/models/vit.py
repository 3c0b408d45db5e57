"""Vision Transformer image tower.

uint8 images [B, H, W, 3] -> normalised (CLIP mean/std) -> non-overlapping patches of
`patch_size` embedded by a strided convolution -> learned position embeddings (+ a class
token when pool="cls") -> Encoder -> pooled [B, width].
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xmodal.models import layers

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ViT(nn.Module):
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  pool: str = "gap"
  dtype: layers.Dtype = jnp.float32
  input_normalized: bool = False     # True: inputs are already CLIP-normalised floats

  @nn.compact
  def __call__(self, images):
    """images: uint8 or float in [0, 255], [B, H, W, 3] (or CLIP-normalised floats when
    `input_normalized`, i.e. data.normalize="clip"). Returns features [B, width]."""
    x = images.astype(jnp.float32)
    if not self.input_normalized:
      x = (x / 255.0 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), (None, None, None, "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                name="patch_embed")(x.astype(self.dtype))
    batch, gh, gw, width = x.shape
    x = x.reshape(batch, gh * gw, width)
    if self.pool == "cls":
      cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           (None, None, "embed")), (1, 1, width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, width)).astype(x.dtype), x], axis=1)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed")), (1, x.shape[1], width))
    x = x + pos.astype(x.dtype)
    x = layers.Encoder(self.depth, self.num_heads, self.mlp_ratio, False, self.dtype,
                       name="transformer")(x)
    return x[:, 0] if self.pool == "cls" else x.mean(axis=1)
