"""Image decoding and augmentation (PIL + libjpeg-turbo), one example at a time.

Fast path: the crop box is chosen from the image header (no pixels decoded yet), then JPEGs
are decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) that still leaves the crop at
least `size` pixels on each side, by libjpeg-turbo through `simplejpeg` (fast integer
IDCT), or PIL's `draft` when simplejpeg is not installed. A 512-pixel JPEG whose crop is
460 pixels wide decodes at 1/2 scale (256 pixels), so IDCT, colour conversion and the
resampling of the crop work on 4x fewer pixels, with no visible loss since the crop is
downsampled to `size` anyway. PNG/WebP have no reduced decode and are read in full.

Outputs are uint8 [S, S, 3] by default (the image tower normalises on device, so hosts
ship bytes, not floats); `finalize` turns them into float32, optionally CLIP-normalised.
"""

import io
import math

import numpy as np
from PIL import Image

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)
_CLIP_SCALE = (1.0 / (255.0 * CLIP_STD)).astype(np.float32)
_CLIP_SHIFT = (-CLIP_MEAN / CLIP_STD).astype(np.float32)

try:  # libjpeg-turbo with n/8 scaled decoding; PIL's draft (1/2, 1/4, 1/8) otherwise.
  import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover
  _simplejpeg = None


def open_image(data: bytes | str) -> Image.Image:
  """Image bytes or a file path -> a lazily decoded PIL image (header read only)."""
  return Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)


def decode(data: bytes | str, target_size: int | None = None) -> Image.Image:
  """Image bytes or a file path -> RGB PIL image. JPEGs are decoded at reduced scale
  (PIL `draft`) when `target_size` is much smaller than the stored image."""
  img = open_image(data)
  if target_size and img.format == "JPEG":
    img.draft("RGB", (target_size, target_size))
  img = img.convert("RGB")
  img.load()
  return img


def sample_crop(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """Inception-style box (x0, y0, w, h): random area fraction `scale` and aspect `ratio`.
  Falls back to the largest centred square after 10 misses."""
  area = width * height
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      x0 = int(rng.integers(0, width - w + 1))
      y0 = int(rng.integers(0, height - h + 1))
      return x0, y0, w, h
  side = min(width, height)
  return (width - side) // 2, (height - side) // 2, side, side


def _reduced(img: Image.Image, box_w: int, box_h: int, size: int) -> tuple[Image.Image, float]:
  """Decodes `img` as RGB, at reduced JPEG scale where the box stays >= size pixels.
  Returns (image, factor) with factor = original width / decoded width."""
  width, height = img.size
  if img.format == "JPEG":
    reduce = _reduction(box_w, box_h, size)
    if reduce > 1:
      img.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
  if img.mode != "RGB":
    img = img.convert("RGB")
  img.load()
  return img, width / img.size[0]


def _is_jpeg(data) -> bool:
  return isinstance(data, (bytes, bytearray)) and data[:3] == b"\xff\xd8\xff"


def _reduction(box_w: int, box_h: int, size: int) -> int:
  """The largest of 1, 2, 4, 8 that leaves a box_w x box_h crop >= size pixels a side."""
  reduce = 1
  while reduce < 8 and box_w / (reduce * 2) >= size and box_h / (reduce * 2) >= size:
    reduce *= 2
  return reduce


def _turbo_decode(data: bytes, width: int, height: int, box_w: int, box_h: int,
                  size: int) -> Image.Image | None:
  """libjpeg-turbo (simplejpeg) decode at scale 1/r, r = `_reduction(...)`; None if
  simplejpeg is missing or fails. Only 1/2, 1/4, 1/8 are used: libjpeg-turbo's other n/8
  scales have no SIMD path and decode slower than full size."""
  if _simplejpeg is None:
    return None
  r = _reduction(box_w, box_h, size)
  try:
    pixels = _simplejpeg.decode_jpeg(data, "RGB", fastdct=True,
                                     min_height=math.ceil(height / r),
                                     min_width=math.ceil(width / r))
  except Exception:  # CMYK, unusual layouts...: PIL handles what simplejpeg cannot.
    return None
  return Image.fromarray(pixels)


def decode_random_crop(data: bytes | str, size: int, rng: np.random.Generator,
                       scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = False,
                       full_decode: bool = False) -> np.ndarray:
  """Training transform from encoded bytes: random resized crop to size x size (bilinear),
  then a horizontal flip with probability 1/2 if `flip`. uint8 [size, size, 3].
  `full_decode` turns the reduced-scale JPEG decode off (the benchmark's baseline)."""
  if isinstance(data, str) and not full_decode:
    with open(data, "rb") as f:
      data = f.read()
  img = open_image(data)
  width, height = img.size
  x0, y0, w, h = sample_crop(width, height, rng, scale, ratio)
  decoded = None
  if full_decode:
    img, factor = img.convert("RGB"), 1.0
  else:
    if _is_jpeg(data):
      decoded = _turbo_decode(data, width, height, w, h, size)
    if decoded is not None:
      img, factor = decoded, width / decoded.size[0]
    else:
      img, factor = _reduced(img, w, h, size)
  box = (x0 / factor, y0 / factor, (x0 + w) / factor, (y0 + h) / factor)
  out = img.resize((size, size), Image.BILINEAR, box=box)
  if flip and rng.random() < 0.5:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(out, np.uint8)


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """Random resized crop of an already decoded image, resized to size x size."""
  x0, y0, w, h = sample_crop(*img.size, rng, scale, ratio)
  out = img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h))
  return np.asarray(out, np.uint8)


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
  """Evaluation transform: shorter side to `size`, then the central size x size."""
  width, height = img.size
  side = min(width, height)
  x0, y0 = (width - side) // 2, (height - side) // 2
  out = img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + side, y0 + side))
  return np.asarray(out, np.uint8)


def decode_center_crop(data: bytes | str, size: int) -> np.ndarray:
  """Evaluation transform from encoded bytes: central square, resized to size x size,
  decoded at reduced JPEG scale where the square stays >= size pixels."""
  if isinstance(data, str):
    with open(data, "rb") as f:
      data = f.read()
  img = open_image(data)
  side = min(img.size)
  decoded = _turbo_decode(data, *img.size, side, side, size) if _is_jpeg(data) else None
  if decoded is None:
    decoded, _ = _reduced(img, side, side, size)
  return resize_center_crop(decoded, size)


def finalize(pixels: np.ndarray, dtype: str = "uint8", normalize: str = "none") -> np.ndarray:
  """uint8 [S, S, 3] -> the pipeline's output: unchanged ("uint8"), float32 in [0, 255]
  ("float32", normalize="none"), or float32 (x / 255 - CLIP mean) / CLIP std
  ("float32", normalize="clip")."""
  if dtype == "uint8":
    return pixels
  x = pixels.astype(np.float32)
  if normalize == "clip":                  # one multiply-add, in place
    x *= _CLIP_SCALE
    x += _CLIP_SHIFT
  return x
