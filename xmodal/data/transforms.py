"""Image decoding and augmentation (PIL), one example at a time.

All functions return uint8 [S, S, 3]; the image tower normalises on device, so hosts ship
bytes, not floats.
"""

import io
import math

import numpy as np
from PIL import Image


def decode(data: bytes | str, target_size: int | None = None) -> Image.Image:
  """Image bytes or a file path -> RGB PIL image. JPEGs are decoded at reduced scale
  (PIL `draft`) when `target_size` is much smaller than the stored image."""
  img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
  if target_size and img.format == "JPEG":
    img.draft("RGB", (target_size, target_size))
  img = img.convert("RGB")
  img.load()
  return img


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style crop: a box of random area fraction `scale` and aspect `ratio`, resized
  to size x size. Falls back to the largest centred box after 10 misses."""
  width, height = img.size
  area = width * height
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      x0 = int(rng.integers(0, width - w + 1))
      y0 = int(rng.integers(0, height - h + 1))
      break
  else:
    w = h = min(width, height)
    x0, y0 = (width - w) // 2, (height - h) // 2
  out = img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h))
  return np.asarray(out, np.uint8)


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
  """Evaluation transform: shorter side to `size`, then the central size x size."""
  width, height = img.size
  side = min(width, height)
  x0, y0 = (width - side) // 2, (height - side) // 2
  out = img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + side, y0 + side))
  return np.asarray(out, np.uint8)
