"""Vision Transformer image tower.

uint8 images [B, H, W, 3] -> normalised (`norm_mean` / `norm_std`, CLIP's by default) ->
non-overlapping patches of `patch_size` embedded by a strided convolution -> position
embeddings (learned, or fixed 2-D sin-cos) -> at train time FLIP patch dropout (keep a random
`1 - patch_dropout` of the patch tokens) -> a class token when pool="cls" -> optional
LayerNorm (`pre_norm`, CLIP's `ln_pre`) -> Encoder -> pooled [B, width]: "cls" (class token),
"gap" (mean of tokens), "map" (attention pooling, SigLIP) .

`VARIANTS` holds the standard sizes (`variant="B/16"` sets width/depth/heads/mlp_dim and the
patch size); `resize_pos_embed` interpolates learned position embeddings to another grid.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmodal.models import layers

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# name: (width, depth, mlp_dim, num_heads), as in big_vision / "Scaling Vision Transformers".
VARIANTS = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}


def parse_variant(variant: str) -> dict:
  """"B/16" -> {width: 768, depth: 12, mlp_dim: 3072, num_heads: 12, patch_size: 16}."""
  name, _, patch = variant.partition("/")
  if name not in VARIANTS or (patch and not patch.isdigit()):
    raise ValueError(f"unknown ViT variant {variant!r}; use NAME[/PATCH] with NAME in "
                     f"{sorted(VARIANTS)}, e.g. 'B/16'")
  width, depth, mlp_dim, heads = VARIANTS[name]
  out = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads)
  if patch:
    out["patch_size"] = int(patch)
  return out


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0):
  """Fixed 2-D sin-cos position embeddings [1, h*w, width] (MoCo v3 / big_vision)."""
  if width % 4:
    raise ValueError(f"sincos2d position embeddings need width % 4 == 0, got {width}")
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
  y = y.reshape(-1)[:, None] * omega[None]
  x = x.reshape(-1)[:, None] * omega[None]
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return jnp.asarray(pe[None], jnp.float32)


def resize_pos_embed(pos, new_grid: tuple[int, int], num_prefix: int = 0,
                     old_grid: tuple[int, int] | None = None, method: str = "bilinear"):
  """Interpolates learned position embeddings [1, prefix + gh*gw, D] (or [prefix + gh*gw, D])
  to a new patch grid, keeping the first `num_prefix` (class token) rows as they are."""
  pos = np.asarray(pos)
  squeeze = pos.ndim == 2
  if squeeze:
    pos = pos[None]
  prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
  n = grid.shape[1]
  if old_grid is None:
    side = int(round(n ** 0.5))
    if side * side != n:
      raise ValueError(f"cannot infer a square grid from {n} position embeddings")
    old_grid = (side, side)
  if tuple(old_grid) == tuple(new_grid):
    return pos[0] if squeeze else pos
  d = grid.shape[-1]
  grid = grid.reshape(1, *old_grid, d)
  grid = np.asarray(jax.image.resize(grid, (1, *new_grid, d), method=method, antialias=False))
  out = np.concatenate([prefix, grid.reshape(1, -1, d).astype(pos.dtype)], axis=1)
  return out[0] if squeeze else out


def patch_dropout(x, rate: float, rng):
  """FLIP: keeps a random subset of round(L * (1 - rate)) tokens of x [B, L, D] per example."""
  batch, length, _ = x.shape
  keep = max(1, int(round(length * (1.0 - rate))))
  noise = jax.random.uniform(rng, (batch, length))
  idx = jnp.argsort(noise, axis=1)[:, :keep]
  return jnp.take_along_axis(x, idx[..., None], axis=1)


class ViT(nn.Module):
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  pool: str = "gap"
  dtype: layers.Dtype = jnp.float32
  input_normalized: bool = False     # True: inputs are already normalised floats
  mlp_dim: int = 0
  act: str = "gelu_tanh"
  norm_first: bool = True
  pre_norm: bool = False
  final_norm: bool = True
  layer_norm_eps: float = 1e-6
  pos_embed: str = "learned"
  patch_dropout: float = 0.0
  norm_mean: tuple = CLIP_MEAN
  norm_std: tuple = CLIP_STD
  remat: str = "none"
  scan: bool = False
  tokens: bool = False               # also return (patch tokens [B, T, width], mask [B, T])

  @nn.compact
  def __call__(self, images, train: bool = False):
    """images: uint8 or float in [0, 255], [B, H, W, 3] (or already-normalised floats when
    `input_normalized`, i.e. data.normalize="clip"). Returns features [B, width]."""
    x = images.astype(jnp.float32)
    if not self.input_normalized:
      x = (x / 255.0 - np.array(self.norm_mean, np.float32)) / np.array(self.norm_std, np.float32)
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), (None, None, None, "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                name="patch_embed")(x.astype(self.dtype))
    batch, gh, gw, width = x.shape
    x = x.reshape(batch, gh * gw, width)
    cls = None
    if self.pool == "cls":
      cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           (None, None, "embed")), (1, 1, width))
      cls = jnp.broadcast_to(cls, (batch, 1, width)).astype(x.dtype)
    if self.pos_embed == "learned":
      pos = self.param("pos_embed", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), (None, None, "embed")),
          (1, gh * gw + (cls is not None), width))
      if cls is not None:
        cls = cls + pos[:, :1].astype(x.dtype)
        pos = pos[:, 1:]
      x = x + pos.astype(x.dtype)
    elif self.pos_embed == "sincos2d":
      x = x + posemb_sincos_2d(gh, gw, width).astype(x.dtype)
    if train and self.patch_dropout > 0:
      x = patch_dropout(x, self.patch_dropout, self.make_rng("dropout"))
    if cls is not None:
      x = jnp.concatenate([cls, x], axis=1)
    if self.pre_norm:
      x = layers.layer_norm(self.dtype, "ln_pre", self.layer_norm_eps)(x)
    x = layers.Encoder(self.depth, self.num_heads, self.mlp_ratio, False, self.dtype,
                       act=self.act, norm_first=self.norm_first, eps=self.layer_norm_eps,
                       mlp_dim=self.mlp_dim, final_norm=self.final_norm, remat=self.remat,
                       scan=self.scan, name="transformer")(x)
    pooled = self._pool(x, width)
    if self.tokens:
      patches = x[:, 1:] if cls is not None else x
      return pooled, patches, jnp.ones(patches.shape[:2], jnp.float32)
    return pooled

  def _pool(self, x, width):
    if self.pool == "cls":
      return x[:, 0]
    if self.pool == "map":
      return layers.MapHead(self.num_heads, self.mlp_dim or int(self.mlp_ratio * width),
                            self.dtype, self.act, self.layer_norm_eps, name="map_head")(x)
    return x.mean(axis=1)
