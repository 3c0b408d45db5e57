"""Image decoding and augmentation (libjpeg-turbo + OpenCV), one example at a time.

Training crop (`decode_random_crop`), fastest path first:
  1. the crop box is drawn from the image header (no pixels decoded yet);
  2. JPEGs are decoded by libjpeg-turbo (`simplejpeg`, fast integer IDCT) at the smallest
     DCT scale 1/r, r in (1, 2, 4, 8), that still leaves the box >= `size` pixels a side:
     a 512-pixel JPEG whose crop is 460 pixels wide decodes at 256 pixels, so the IDCT,
     colour conversion and resampling work on 4x fewer pixels. Other formats (and JPEGs
     simplejpeg refuses, e.g. CMYK) are decoded by PIL (`draft` for JPEG);
  3. the box is snapped to whole pixels of the decoded image (a random box either way);
  4. other formats decode whole (PIL); then only the box is colour-converted and its
     transparency (PNG/WebP alpha, palette or colour-key transparency) composited onto a
     background colour (`data.alpha_background`, white by default; dropping the alpha
     channel would turn most transparent clip-art black). A box more than 6x the output
     is resized by PIL itself, through its integer box reduction (`reducing_gap`);
  5. `resize`: an antialiased bilinear resize by OpenCV. PIL's antialiased bilinear
     (what torchvision's RandomResizedCrop does on PIL images) widens the triangle filter
     by the downscale factor s; here a Gaussian blur of the same added variance,
     sigma^2 = (s^2 - 1) / 6, is followed by cv2's SIMD bilinear resize. On the
     benchmark's photos this is within ~40 dB PSNR of PIL's output and ~5x faster;
     PIL's resize was half of all CPU time (docs/benchmarks/input.md). The blur's cost
     grows with sigma (4096 -> 64 pixels: sigma 26, 1.5 s), so beyond a 6x downscale an
     integer box reduction (cv2 INTER_AREA, PIL's `reducing_gap` idea) first brings the
     ratio down to 3-6x: 4096 -> 64 in 52 ms, 49 dB from PIL's full filter (the
     benchmark's large-image table).

Images whose header says they hold more than `max_pixels` pixels (`data.max_image_pixels`)
raise `ImageTooLarge` before any pixel is decoded: PNG and WebP decode whole, so one
10,000 x 16,000 PNG costs seconds and gigabytes each epoch; the pipeline skips and counts
them with the reason in the log.

Outputs are uint8 [S, S, 3] by default (the image tower normalises on device, so hosts
ship bytes, not floats); `finalize` turns them into float32, optionally CLIP-normalised.
Evaluation (`decode_center_crop`) keeps PIL's bicubic resize, as open_clip evaluates.
"""

import functools
import io
import math
import warnings

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from xmodal.data import bad

# The loader parallelises over worker processes and read threads; OpenCV's own thread pool
# on top of that would oversubscribe the cores for these small images.
cv2.setNumThreads(1)

# Images over `max_pixels` are refused from their header (ImageTooLarge); PIL's own warning
# for images over Image.MAX_IMAGE_PIXELS (89M) would only repeat that, once per read, in
# every worker. PIL still refuses images over twice its limit (DecompressionBombError).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

WHITE = (255, 255, 255)


class ImageTooLarge(ValueError):
  """An image's header says it holds more pixels than the configured limit."""

  def __init__(self, width: int, height: int, max_pixels: int):
    super().__init__(f"{width} x {height} = {width * height / 1e6:.1f}M pixels, over the "
                     f"limit of {max_pixels / 1e6:.1f}M")
    self.width, self.height, self.max_pixels = width, height, max_pixels


def check_pixels(width: int, height: int, max_pixels: int):
  """Raises ImageTooLarge if max_pixels > 0 and width * height exceeds it."""
  if max_pixels and width * height > max_pixels:
    raise ImageTooLarge(width, height, max_pixels)


CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)
_CLIP_SCALE = (1.0 / (255.0 * CLIP_STD)).astype(np.float32)
_CLIP_SHIFT = (-CLIP_MEAN / CLIP_STD).astype(np.float32)


def open_image(data: bytes | str) -> Image.Image:
  """Image bytes or a file path -> a lazily decoded PIL image (header read only)."""
  return Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)


def decode(data: bytes | str, target_size: int | None = None, background=WHITE,
           max_pixels: int = 0) -> Image.Image:
  """Image bytes or a file path -> RGB PIL image, transparency composited onto
  `background`. JPEGs are decoded at reduced scale (PIL `draft`) when `target_size` is
  much smaller than the stored image. Raises ImageTooLarge over `max_pixels` (0 = no limit)."""
  img = open_image(data)
  check_pixels(*img.size, max_pixels)
  if target_size and img.format == "JPEG":
    img.draft("RGB", (target_size, target_size))
  return to_rgb(img, background)


def has_alpha(img: Image.Image) -> bool:
  """Whether a PIL image has transparency: an alpha channel, or a palette / colour-key
  transparency entry (PNG tRNS, GIF)."""
  return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def composite(pixels: np.ndarray, background=WHITE) -> np.ndarray:
  """uint8 [H, W, 4] RGBA (straight alpha) or [H, W, 2] grey + alpha -> uint8 [H, W, 3]:
  each pixel blended over the RGB `background`, rounded to nearest."""
  color, alpha = pixels[..., :-1], pixels[..., -1:]
  if color.shape[-1] == 1:
    color = np.repeat(color, 3, axis=-1)
  if alpha.min() == 255:             # many RGBA files are opaque: nothing to blend
    return np.ascontiguousarray(color)
  alpha = alpha.astype(np.uint16)
  bg = np.asarray(background, np.uint16)
  mixed = color.astype(np.uint16) * alpha + bg * (255 - alpha) + 127   # <= 65,152: fits
  return (mixed // 255).astype(np.uint8)


def as_rgb(pixels: np.ndarray, background=WHITE) -> np.ndarray:
  """uint8 [H, W], [H, W, 1], [H, W, 2] (grey + alpha), [H, W, 3] or [H, W, 4] (RGBA) ->
  [H, W, 3], transparency composited onto `background`."""
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  channels = pixels.shape[2]
  if channels in (2, 4):
    return composite(pixels, background)
  if channels == 1:
    return np.repeat(pixels, 3, axis=2)
  return pixels


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(img: Image.Image, background=WHITE) -> Image.Image:
  """A PIL image of any mode -> RGB, transparency composited onto `background` (PIL's
  masked paste: the same rounding as `composite`, ~4x faster on large images).

  16-bit grey (PNG) maps to 8 bits by rounding x / 257 (65535 -> 255): PIL's own convert
  clips it at 255, so a 16-bit PNG would decode white. Pixels with no faithful 8-bit
  mapping (32-bit integers or floats, e.g. TIFF) raise BadData("unsupported") instead of
  being clipped."""
  if img.mode in _SIXTEEN_BIT or (img.mode == "I" and img.format == "PNG"):
    x = np.asarray(img).astype(np.uint32)
    return Image.fromarray(((x + 128) // 257).astype(np.uint8)).convert("RGB")
  if img.mode in ("I", "F"):
    raise bad.BadData("unsupported", f"{img.format} image in mode {img.mode!r} (32-bit "
                      f"pixels): no faithful 8-bit mapping")
  if not has_alpha(img):
    return img if img.mode == "RGB" else img.convert("RGB")
  rgba = img.convert("RGBA")
  out = Image.new("RGB", img.size, tuple(background))
  out.paste(rgba, (0, 0), rgba)
  return out


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
  """Decodes `img` (mode unchanged: colour conversion and compositing are left for the
  crop), at reduced JPEG scale where the box stays >= size pixels. Returns (image,
  factor), factor = original / decoded width."""
  width, height = img.size
  if img.format == "JPEG":
    reduce = _reduction(box_w, box_h, size)
    if reduce > 1:
      img.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
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
                  size: int) -> np.ndarray | None:
  """libjpeg-turbo decode at scale 1/r, r = `_reduction(...)` -> uint8 [h/r, w/r, 3], or
  None where simplejpeg fails (CMYK, unusual layouts: PIL handles those). Only 1/2, 1/4,
  1/8 are used: libjpeg-turbo's other n/8 scales have no SIMD path and decode slower
  than full size."""
  r = _reduction(box_w, box_h, size)
  try:
    return simplejpeg.decode_jpeg(data, "RGB", fastdct=True, min_height=math.ceil(height / r),
                                  min_width=math.ceil(width / r))
  except Exception:
    return None


def _header_size(data: bytes) -> tuple[int, int]:
  """(width, height) from the header: simplejpeg's for JPEG (microseconds), else PIL's."""
  if _is_jpeg(data):
    try:
      height, width, _, _ = simplejpeg.decode_jpeg_header(data)
      return width, height
    except Exception:
      pass
  return open_image(data).size


def _decode_box(data: bytes, width: int, height: int, box, size: int, background=WHITE,
                resample=Image.BILINEAR) -> np.ndarray:
  """Encoded image (width x height stored) + box (x0, y0, w, h) in stored pixels -> uint8
  RGB [h', w', 3]: the box's pixels. JPEGs: decoded at the smallest DCT scale that keeps
  the box >= size pixels a side (libjpeg-turbo; PIL `draft` for what it refuses). Other
  formats decode whole; then, in PIL, only the box is colour-converted and composited
  onto `background` where transparent. A box more than 6x `size` a side is returned
  already resized to size x size by PIL (`resample`) through its integer box reduction
  (`reducing_gap`), so that the array handed to numpy is small."""
  pixels = _turbo_decode(data, width, height, box[2], box[3], size) if _is_jpeg(data) else None
  if pixels is not None:
    x0, y0, w, h = _snap(box, width, pixels.shape)
    return pixels[y0:y0 + h, x0:x0 + w]
  img, _ = _reduced(open_image(data), box[2], box[3], size)
  x0, y0, w, h = _snap(box, width, (img.height, img.width))
  region = to_rgb(img.crop((x0, y0, x0 + w, y0 + h)), background)
  if _area_factors(w, h, size, size) != (1, 1):
    # PIL adjusts the resampling box to the reduced image's own grid; reducing to a
    # numpy array first and resizing it whole would shift edges (up to 7 dB PSNR lost).
    region = region.resize((size, size), resample, reducing_gap=AREA_GAP)
  return np.asarray(region)


def _snap(box, width: int, decoded_shape) -> tuple[int, int, int, int]:
  """A box (x0, y0, w, h) in an image `width` pixels wide -> the same box in whole pixels
  of its decode at scale decoded_shape[1] / width, decoded_shape = (height', width')."""
  h_max, w_max = decoded_shape[:2]
  f = w_max / width
  x0, y0 = min(int(round(box[0] * f)), w_max - 1), min(int(round(box[1] * f)), h_max - 1)
  w = min(max(1, int(round(box[2] * f))), w_max - x0)
  h = min(max(1, int(round(box[3] * f))), h_max - y0)
  return x0, y0, w, h


# Downscales beyond AREA_FROM x first shrink by an integer box filter (cv2 INTER_AREA) to
# a ratio of AREA_GAP..2 x AREA_GAP, so the Gaussian below stays small (sigma <= 2.5). With
# a gap of 3, 4096 -> 64 pixels is > 40 dB from PIL's full triangle filter on fine
# textures (a gap of 2: ~36 dB; INTER_AREA alone: ~26-35 dB).
AREA_GAP = 3.0
AREA_FROM = 2 * AREA_GAP


def _area_factors(w: int, h: int, width: int, height: int) -> tuple[int, int]:
  """(kx, ky) = (floor(sx / AREA_GAP), floor(sy / AREA_GAP)), at least 1, for a w x h
  image resized to width x height (s = the side's downscale): PIL's `reducing_gap` rule."""
  return max(1, int(w / width / AREA_GAP)), max(1, int(h / height / AREA_GAP))


def _area_reduce(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
  """uint8 [H, W, C] -> [ceil(H / ky), ceil(W / kx), C]: a box-filter reduction by the
  integers of `_area_factors` (1 where a side shrinks less than AREA_FROM x)."""
  kx, ky = _area_factors(pixels.shape[1], pixels.shape[0], width, height)
  if kx == ky == 1:
    return pixels
  size = (math.ceil(pixels.shape[1] / kx), math.ceil(pixels.shape[0] / ky))
  return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [height, width, C], antialiased bilinear: where a side
  shrinks by s > 1, a Gaussian blur with sigma^2 = (s^2 - 1) / 6 along it (the variance
  PIL's widened triangle filter adds), then cv2 bilinear. Upscaling is plain bilinear.
  Beyond a 6x downscale a box reduction comes first (`_area_reduce`), so the cost stays
  proportional to the input's pixels whatever the ratio."""
  pixels = _area_reduce(pixels, width, height)
  sx, sy = pixels.shape[1] / width, pixels.shape[0] / height
  sigma_x = math.sqrt((sx * sx - 1) / 6) if sx > 1 else 0.0
  sigma_y = math.sqrt((sy * sy - 1) / 6) if sy > 1 else 0.0
  if max(sigma_x, sigma_y) > 0.3:     # below: a 3-tap kernel of weights < 0.004 a side
    # ksize (0, 0): OpenCV sizes the kernel from sigma; a tiny sigma is a 1-tap kernel.
    pixels = cv2.GaussianBlur(pixels, (0, 0), sigmaX=max(sigma_x, 1e-3),
                              sigmaY=max(sigma_y, 1e-3))
  return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)


def decode_random_crop(data: bytes | str, size: int, rng: np.random.Generator,
                       scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = False,
                       background=WHITE, max_pixels: int = 0) -> np.ndarray:
  """Training transform from encoded bytes (or a file path): random resized crop to
  size x size, then a horizontal flip with probability 1/2 if `flip`. The box is drawn
  from the header and the JPEG decoded at reduced scale where the box allows (module
  docstring); transparency is composited onto `background`; over `max_pixels` (0 = no
  limit) raises ImageTooLarge before decoding. -> uint8 [size, size, 3]."""
  if isinstance(data, str):
    with open(data, "rb") as f:
      data = f.read()
  width, height = _header_size(data)
  check_pixels(width, height, max_pixels)
  box = sample_crop(width, height, rng, scale, ratio)
  return _resize_flip(_decode_box(data, width, height, box, size, background), size, rng,
                      flip)


def _resize_flip(pixels, size, rng, flip) -> np.ndarray:
  out = resize(pixels, size, size)
  if flip and rng.random() < 0.5:
    out = cv2.flip(out, 1)
  return out


def reference_random_crop(data: bytes, size: int, rng: np.random.Generator,
                          scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """What `decode_random_crop` (no flip) computes, the slow and plain way: PIL decodes at
  full size and resizes the same box (drawn by the same rng, snapped the same way) with its
  antialiased bilinear filter. For tests and the benchmark's quality column.
  -> uint8 [size, size, 3]."""
  width, height = _header_size(data)
  box = sample_crop(width, height, rng, scale, ratio)
  r = _reduction(box[2], box[3], size) if _is_jpeg(data) else 1
  decoded_shape = (math.ceil(height / r), math.ceil(width / r))
  f = width / decoded_shape[1]                  # original pixels per decoded pixel
  x0, y0, w, h = _snap(box, width, decoded_shape)
  full = to_rgb(open_image(data))
  out = full.resize((size, size), Image.BILINEAR, box=(x0 * f, y0 * f, (x0 + w) * f,
                                                        (y0 + h) * f))
  return np.asarray(out, np.uint8)


def random_resized_crop(pixels: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = False,
                        background=WHITE) -> np.ndarray:
  """Random resized crop (+ flip) of decoded pixels: uint8 [H, W], [H, W, 1], [H, W, 2]
  (grey + alpha), [H, W, 3] or [H, W, 4] (RGBA; alpha composited onto `background`) ->
  RGB [size, size, 3]."""
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  x0, y0, w, h = sample_crop(pixels.shape[1], pixels.shape[0], rng, scale, ratio)
  # Composited after cropping (only the box's pixels) and before resizing (resampling
  # straight alpha would bleed the colour of transparent pixels into the edges).
  return _resize_flip(as_rgb(pixels[y0:y0 + h, x0:x0 + w], background), size, rng, flip)


def _center_square(width: int, height: int) -> tuple[int, int, int]:
  side = min(width, height)
  return (width - side) // 2, (height - side) // 2, side


def resize_center_crop(img: Image.Image | np.ndarray, size: int,
                       background=WHITE) -> np.ndarray:
  """Evaluation transform: shorter side to `size`, then the central size x size (PIL
  bicubic, as open_clip evaluates; beyond a 6x downscale PIL first box-reduces by an
  integer factor, `reducing_gap`, so huge images stay fast). A PIL image or uint8 pixels
  as `random_resized_crop` takes them; transparency composited onto `background`.
  -> uint8 [size, size, 3]."""
  if isinstance(img, np.ndarray):
    pixels = img[..., None] if img.ndim == 2 else img
    x0, y0, side = _center_square(pixels.shape[1], pixels.shape[0])
    img = Image.fromarray(as_rgb(pixels[y0:y0 + side, x0:x0 + side], background))
  else:
    x0, y0, side = _center_square(*img.size)
    if side != img.width or side != img.height:
      img = img.crop((x0, y0, x0 + side, y0 + side))
    img = to_rgb(img, background)
  x0, y0, side = _center_square(*img.size)
  out = img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + side, y0 + side),
                   reducing_gap=AREA_GAP)
  return np.asarray(out, np.uint8)


def decode_center_crop(data: bytes | str, size: int, background=WHITE,
                       max_pixels: int = 0) -> np.ndarray:
  """Evaluation transform from encoded bytes: central square, resized to size x size,
  decoded at reduced JPEG scale where the square stays >= size pixels; transparency
  composited onto `background`; over `max_pixels` (0 = no limit) raises ImageTooLarge
  before decoding."""
  if isinstance(data, str):
    with open(data, "rb") as f:
      data = f.read()
  width, height = _header_size(data)
  check_pixels(width, height, max_pixels)
  x0, y0, side = _center_square(width, height)
  return resize_center_crop(_decode_box(data, width, height, (x0, y0, side, side), size,
                                        background, Image.BICUBIC), size)


def finalize(pixels: np.ndarray, dtype: str = "uint8", normalize: str = "none") -> np.ndarray:
  """uint8 [S, S, 3] -> the pipeline's output: unchanged ("uint8"), float32 in [0, 255]
  ("float32", normalize="none"), or float32 (x / 255 - CLIP mean) / CLIP std
  ("float32", normalize="clip")."""
  if dtype == "uint8":
    return pixels
  x = pixels.astype(np.float32)
  if normalize == "clip":
    # One multiply-add in place, over rows of W*3 values: broadcasting the (3,) constants
    # directly would make numpy's inner loop 3 elements long, ~6x slower.
    height, width, channels = x.shape
    scale, shift = _row_constants(width)
    rows = x.reshape(height, width * channels)
    rows *= scale
    rows += shift
  return x


@functools.lru_cache(maxsize=8)
def _row_constants(width: int) -> tuple[np.ndarray, np.ndarray]:
  """CLIP scale and shift tiled along one image row: float32 [width * 3] each."""
  return np.tile(_CLIP_SCALE, width), np.tile(_CLIP_SHIFT, width)
