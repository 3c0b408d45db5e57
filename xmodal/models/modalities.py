"""Towers for modalities beyond images and text. Each turns its input into tokens [B, N, D]
and runs the shared transformer (`TokenEncoder`: learned positions, Encoder with the tower's
remat/scan/act/... options, then "gap", "cls" or "map" pooling).

  audio   float log-mel spectrograms [B, frames, n_mels] (xmodal/data/audio.py computes them
          in numpy) -> non-overlapping patch_size x patch_size patches (AST / AudioMAE style).
  video   uint8 frames [B, F, H, W, 3] -> every frame through a ViT (shared weights) ->
          per-frame features -> "mean" over time, or "attention": a temporal transformer.
  volume  float 3-D volumes [B, S, H, W] -> every slice through a 1-channel patch encoder ->
          per-slice features -> attention (MAP) pooling over slices.
  vector  float features [B, F] -> "mlp" (a residual MLP), "transformer" (one token per
          feature: value x embedding + feature embedding) or "identity" (cached features of
          a frozen encoder: only the head learns, projector-only alignment).
  signal  float 1-D signals [B, T, C] -> patches of patch_len steps (PatchTST style) ->
          transformer.
"""

import flax.linen as nn
import ml_collections
import jax.numpy as jnp

from xmodal.models import layers, vit as vit_lib


def _encoder(cfg, dtype, causal=False, name="transformer"):
  return layers.Encoder(cfg.depth, cfg.num_heads, cfg.mlp_ratio, causal, dtype, act=cfg.act,
                        norm_first=True, eps=cfg.layer_norm_eps, mlp_dim=cfg.mlp_dim,
                        final_norm=True, remat=cfg.remat, scan=cfg.scan, name=name)


class TokenEncoder(nn.Module):
  """tokens [B, N, D] -> + learned positions (+ class token) -> Encoder -> pooled [B, D]."""
  cfg: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    batch, n, width = x.shape
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed")), (1, n, width))
    x = (x + pos).astype(self.dtype)
    if cfg.pool == "cls":
      cls = self.param("cls", nn.with_logical_partitioning(
          nn.initializers.zeros, (None, None, "embed")), (1, 1, width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, width)).astype(x.dtype), x], 1)
    x = _encoder(cfg, self.dtype)(x)
    if cfg.pool == "cls":
      return x[:, 0]
    if cfg.pool == "map":
      return layers.MapHead(cfg.num_heads, cfg.mlp_dim or int(cfg.mlp_ratio * width),
                            self.dtype, cfg.act, cfg.layer_norm_eps, name="map_head")(x)
    return x.mean(axis=1)


def _patch_conv(width, patch, dtype, name="patch_embed"):
  return nn.Conv(width, patch, strides=patch, padding="VALID", dtype=dtype,
                 kernel_init=nn.with_logical_partitioning(
                     nn.initializers.lecun_normal(), (None,) * len(patch) + (None, "embed")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                 name=name)


class AudioTower(nn.Module):
  cfg: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, spec, train: bool = False):
    p = self.cfg.patch_size
    x = _patch_conv(self.cfg.width, (p, p), self.dtype)(spec[..., None].astype(self.dtype))
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return TokenEncoder(self.cfg, self.dtype, name="tokens")(x)


class VideoTower(nn.Module):
  cfg: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, frames, train: bool = False):
    cfg = self.cfg
    batch, f = frames.shape[:2]
    frame_vit = vit_lib.ViT(patch_size=cfg.patch_size, width=cfg.width, depth=cfg.depth,
                            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, mlp_dim=cfg.mlp_dim,
                            pool="gap", act=cfg.act, layer_norm_eps=cfg.layer_norm_eps,
                            remat=cfg.remat, scan=cfg.scan, dtype=self.dtype, name="frame")
    x = frame_vit(frames.reshape(batch * f, *frames.shape[2:]), train=train)
    x = x.reshape(batch, f, -1)
    if cfg.temporal == "mean":
      return x.mean(axis=1)
    pos = self.param("time_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed")), (1, f, x.shape[-1]))
    x = layers.Encoder(cfg.temporal_depth, cfg.num_heads, cfg.mlp_ratio, False, self.dtype,
                       act=cfg.act, eps=cfg.layer_norm_eps, mlp_dim=cfg.mlp_dim,
                       name="temporal")(x + pos.astype(x.dtype))
    return x.mean(axis=1)


class VolumeTower(nn.Module):
  cfg: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, vol, train: bool = False):
    cfg = self.cfg
    batch, s, h, w = vol.shape
    p = cfg.patch_size
    x = _patch_conv(cfg.width, (p, p), self.dtype)(vol.reshape(batch * s, h, w, 1).astype(self.dtype))
    x = x.reshape(batch * s, -1, cfg.width)
    slice_cfg = ml_collections.ConfigDict(cfg.to_dict())
    slice_cfg.pool = "gap"
    x = TokenEncoder(slice_cfg, self.dtype, name="slice")(x)       # [B*S, D]
    x = x.reshape(batch, s, cfg.width)
    pos = self.param("slice_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed")), (1, s, cfg.width))
    return layers.MapHead(cfg.num_heads, cfg.mlp_dim or int(cfg.mlp_ratio * cfg.width),
                          self.dtype, cfg.act, cfg.layer_norm_eps, name="slice_pool")(
                              x + pos.astype(x.dtype))


class VectorTower(nn.Module):
  cfg: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, v, train: bool = False):
    cfg = self.cfg
    v = v.astype(jnp.float32)
    if cfg.encoder == "identity":
      return v
    if cfg.encoder == "mlp":
      x = layers.dense(cfg.width, (None, "embed"), self.dtype, "stem")(v)
      for i in range(cfg.depth):
        y = layers.layer_norm(self.dtype, f"ln_{i}", cfg.layer_norm_eps)(x)
        x = x + layers.Mlp(cfg.mlp_dim or int(cfg.mlp_ratio * cfg.width), self.dtype, cfg.act,
                           name=f"mlp_{i}")(y)
      return layers.layer_norm(self.dtype, "ln_final", cfg.layer_norm_eps)(x)
    n = v.shape[1]
    value_embed = self.param("value_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (n, cfg.width))
    feature_embed = self.param("feature_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (n, cfg.width))
    x = v[..., None] * value_embed + feature_embed
    return TokenEncoder(cfg, self.dtype, name="tokens")(x)


class SignalTower(nn.Module):
  cfg: object
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, sig, train: bool = False):
    cfg = self.cfg
    batch, t, c = sig.shape
    p = cfg.patch_len
    x = sig[:, : (t // p) * p].reshape(batch, t // p, p * c).astype(self.dtype)
    x = layers.dense(cfg.width, (None, "embed"), self.dtype, "patch_embed")(x)
    return TokenEncoder(cfg, self.dtype, name="tokens")(x)
