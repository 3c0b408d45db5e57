"""Kind "vit": a Vision Transformer image tower (xmodal/models/vit.py).

Input: uint8 images [B, S, S, 3], S = data.image_size (float32 with data.image_dtype).
Record values: encoded image bytes (JPEG, PNG, WebP...), a file path, or a uint8 array
[H, W(, C)]; training takes a random resized crop (+ flip), evaluation the centre crop
(xmodal/data/transforms.py).
"""

import dataclasses

import numpy as np

from xmodal.fields import ConfigError, Field
from xmodal.towers import _common

DEFAULT_FIELD = "image"
EXTENSIONS = ("jpg", "jpeg", "png", "webp")

FIELDS = dict(
    **_common.transformer_fields(),
    **_common.image_text_fields(),
    patch_size=Field(8, "pixels per patch side (data.image_size must be a multiple)", gt=0),
    variant=Field("", "'B/16', 'L/14', ...: sets width/depth/num_heads/mlp_dim/patch_size"),
    pos_embed=Field("learned", "position embeddings: 'learned', 'sincos2d' (fixed) or 'none'",
                    choices=("learned", "sincos2d", "none")),
    patch_dropout=Field(0.0, "FLIP: fraction of patch tokens dropped at train time", ge=0,
                        lt=1),
    norm_mean=Field((0.48145466, 0.4578275, 0.40821073),
                    "pixel normalisation mean (CLIP's; SigLIP: (0.5,)*3)"),
    norm_std=Field((0.26862954, 0.26130258, 0.27577711),
                   "pixel normalisation std (CLIP's; SigLIP: (0.5,)*3)", gt=0),
    **_common.input_fields(DEFAULT_FIELD),
)


def resolved(cfg) -> dict:
  """The size fields with `variant` ("B/16") applied over them."""
  from xmodal.models import vit   # noqa: PLC0415 (the config layer never imports models)
  out = dict(width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
             patch_size=cfg.patch_size)
  if cfg.get("variant"):
    out.update(vit.parse_variant(cfg.variant))
  return out


def check(config, name, cfg) -> None:
  try:
    size = resolved(cfg)
  except ValueError as e:
    raise ConfigError(f"config.towers.{name}.variant: {e}") from None
  if size["width"] % size["num_heads"]:
    raise ConfigError(f"config.towers.{name}.width: {size['width']} is not divisible by "
                      f"num_heads {size['num_heads']}")
  if config.data.image_size % size["patch_size"]:
    raise ConfigError(f"config.data.image_size: {config.data.image_size} is not divisible by "
                      f"the ViT patch_size {size['patch_size']}")


def output_width(cfg) -> int:
  return resolved(cfg)["width"]


def build(cfg, config, dtype, name):
  from xmodal.models import vit   # noqa: PLC0415
  kw = dict(mlp_ratio=cfg.mlp_ratio, mlp_dim=cfg.mlp_dim, act=cfg.act,
            norm_first=cfg.norm_first, pre_norm=cfg.pre_norm, final_norm=cfg.final_norm,
            layer_norm_eps=cfg.layer_norm_eps, remat=cfg.remat, scan=cfg.scan)
  kw.update(resolved(cfg))
  return vit.ViT(pool=cfg.pool, pos_embed=cfg.pos_embed, patch_dropout=cfg.patch_dropout,
                 norm_mean=tuple(cfg.norm_mean), norm_std=tuple(cfg.norm_std), dtype=dtype,
                 input_normalized=config.data.normalize == "clip", tokens=cfg.tokens,
                 name=name, **kw)


def input_spec(cfg, config):
  s = config.data.image_size
  return (s, s, 3), np.dtype(np.uint8 if config.data.image_dtype == "uint8" else np.float32)


@dataclasses.dataclass(frozen=True)
class Prepare:
  """Image bytes / path / array -> uint8 [S, S, 3] (or float32): random resized crop
  (+ flip) when training, resize + centre crop otherwise; transparency composited onto
  `background`; encoded images whose header holds more than `max_pixels` are skipped
  (reason "too_large") before decoding."""
  size: int
  crop_scale: tuple
  crop_ratio: tuple
  flip: bool
  dtype: str
  normalize: str
  background: tuple = (255, 255, 255)
  max_pixels: int = 0                       # 0 = no limit

  def __call__(self, image, train: bool, rng: np.random.Generator) -> np.ndarray:
    from xmodal.data import bad, transforms   # noqa: PLC0415
    bg = tuple(self.background)
    try:
      if isinstance(image, np.ndarray):
        if train:
          pixels = transforms.random_resized_crop(image, self.size, rng, self.crop_scale,
                                                  self.crop_ratio, self.flip, bg)
        else:
          pixels = transforms.resize_center_crop(image, self.size, bg)
      elif train:
        pixels = transforms.decode_random_crop(image, self.size, rng, self.crop_scale,
                                               self.crop_ratio, self.flip, bg, self.max_pixels)
      else:
        pixels = transforms.decode_center_crop(image, self.size, bg, self.max_pixels)
    except transforms.ImageTooLarge as e:
      where = image if isinstance(image, str) else f"{len(image)} bytes"
      raise bad.BadData("too_large", f"image over data.max_image_pixels ({where}): {e}") \
          from None
    return transforms.finalize(np.ascontiguousarray(pixels), self.dtype, self.normalize)


def preparer(cfg, config) -> Prepare:
  d = config.data
  # .get: configs saved before these fields existed (xmodal.load).
  return Prepare(d.image_size, tuple(d.crop_scale), tuple(d.crop_ratio), d.flip,
                 d.image_dtype, d.normalize, tuple(d.get("alpha_background", (255, 255, 255))),
                 d.get("max_image_pixels", 0))


def synthetic(cfg, config, labels, rng, num_classes):
  """One noisy colour per latent class: uint8 [n, S, S, 3]."""
  s = config.data.image_size
  colors = np.random.default_rng(1234).uniform(0, 255, (num_classes, 3))
  img = colors[labels][:, None, None, :] + rng.normal(0, 40, (len(labels), s, s, 3))
  return np.clip(img, 0, 255).astype(np.uint8)
