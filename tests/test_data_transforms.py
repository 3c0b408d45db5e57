"""Decode and augmentation: the reduced-scale JPEG crop matches a full decode, flips,
eval center crop, float / CLIP-normalised output, large downscales, transparency over a
background colour, the pixel limit read from the header."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from xmodal.data import transforms


def _photo(size=(512, 384), seed=0) -> bytes:
  rng = np.random.default_rng(seed)
  img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
      size, Image.BICUBIC)
  buf = io.BytesIO()
  img.save(buf, "JPEG", quality=95)
  return buf.getvalue()


def _psnr(a, b) -> float:
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  return 10 * np.log10(255.0 ** 2 / mse)


def _texture(rng, size=(400, 300), cell=2) -> np.ndarray:
  """Fine random texture: detail near the frequencies a 2x+ downscale must filter out."""
  small = rng.integers(0, 256, (size[1] // cell, size[0] // cell, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC))


def test_resize_matches_pil_antialiased_bilinear():
  """`resize` (Gaussian pre-blur + cv2 bilinear) against PIL's antialiased bilinear, on
  textures where plain bilinear aliases: close to PIL, and far better than no blur."""
  rng = np.random.default_rng(0)
  for cell in (2, 3):
    img = _texture(rng, cell=cell)
    for out in ((300, 225), (200, 150), (108, 81), (64, 48), (600, 450)):
      ref = np.asarray(Image.fromarray(img).resize(out, Image.BILINEAR))
      ours = transforms.resize(img, *out)
      assert ours.shape == ref.shape and ours.dtype == np.uint8
      assert _psnr(ours, ref) > 33.0, (cell, out, _psnr(ours, ref))
      if out[0] <= 200:                      # 2x or more: unfiltered bilinear aliases
        plain = cv2.resize(img, out, interpolation=cv2.INTER_LINEAR)
        assert _psnr(plain, ref) < 30.0 < _psnr(ours, ref) - 10


def test_reduced_decode_is_used_and_matches_a_full_pil_decode():
  data = _photo()                                          # 512 x 384
  assert transforms._decode_box(data, 512, 384, (0, 0, 480, 380), 160).shape == (190, 240, 3)
  assert transforms._decode_box(data, 512, 384, (0, 0, 200, 200), 160).shape == (200, 200, 3)
  buf = io.BytesIO()                        # 4-pixel texture: misalignment would show
  Image.fromarray(_texture(np.random.default_rng(1), (512, 384), 4)).save(buf, "JPEG",
                                                                           quality=95)
  data = buf.getvalue()
  reductions = set()
  for seed in range(6):
    fast = transforms.decode_random_crop(data, 112, np.random.default_rng(seed), (0.3, 1.0))
    # The same box, cut from PIL's full-size decode and resized by PIL.
    ref = transforms.reference_random_crop(data, 112, np.random.default_rng(seed), (0.3, 1.0))
    _, _, w, h = transforms.sample_crop(512, 384, np.random.default_rng(seed), (0.3, 1.0))
    reductions.add(transforms._reduction(w, h, 112))
    assert fast.shape == ref.shape == (112, 112, 3) and fast.dtype == np.uint8
    # 1/2-scale DCT decode vs PIL's filter: ~30-40 dB; one pixel off would be ~16 dB.
    assert _psnr(fast, ref) > 27.0, (seed, _psnr(fast, ref))
    assert _psnr(np.roll(ref, 1, axis=1), ref) < 20.0
  assert reductions == {1, 2}                              # both paths were checked


def test_flip_and_crop_are_seeded():
  data = _photo(seed=1)
  a = transforms.decode_random_crop(data, 64, np.random.default_rng(3), flip=True)
  b = transforms.decode_random_crop(data, 64, np.random.default_rng(3), flip=True)
  np.testing.assert_array_equal(a, b)
  flipped = 0
  for seed in range(20):
    plain = transforms.decode_random_crop(data, 64, np.random.default_rng(seed))
    maybe = transforms.decode_random_crop(data, 64, np.random.default_rng(seed), flip=True)
    if not np.array_equal(plain, maybe):
      np.testing.assert_array_equal(maybe, plain[:, ::-1])
      flipped += 1
  assert 3 <= flipped <= 17


def test_eval_center_crop_and_png():
  data = _photo((300, 200))
  out = transforms.decode_center_crop(data, 64)
  full = transforms.resize_center_crop(Image.open(io.BytesIO(data)).convert("RGB"), 64)
  assert out.shape == (64, 64, 3)
  assert np.abs(out.astype(float) - full).mean() < 4.0
  buf = io.BytesIO()
  Image.open(io.BytesIO(data)).convert("L").save(buf, "PNG")   # grayscale PNG -> RGB
  assert transforms.decode_random_crop(buf.getvalue(), 32, np.random.default_rng(0)).shape == (
      32, 32, 3)


def test_finalize():
  pixels = np.full((2, 2, 3), 255, np.uint8)
  assert transforms.finalize(pixels) is pixels
  np.testing.assert_array_equal(transforms.finalize(pixels, "float32"), 255.0)
  clip = transforms.finalize(pixels, "float32", "clip")
  np.testing.assert_allclose(clip[0, 0], (1 - transforms.CLIP_MEAN) / transforms.CLIP_STD,
                             rtol=1e-6)


def test_resize_stays_fast_for_any_ratio_and_matches_pil(monkeypatch):
  """Large downscales (up to 64x, different per side) against PIL's antialiased bilinear:
  > 38 dB. The work stays bounded: the Gaussian blur, whose cost grows with sigma, never
  gets a sigma above 2.5 (a 2048 -> 32 resize would need sigma 26 without the box
  reduction first), and the box reduction only acts beyond a 6x downscale."""
  sigmas = []
  blur = cv2.GaussianBlur

  def recording_blur(src, ksize, sigmaX, sigmaY=0, **kw):
    sigmas.append(max(sigmaX, sigmaY))
    return blur(src, ksize, sigmaX=sigmaX, sigmaY=sigmaY, **kw)

  monkeypatch.setattr(transforms.cv2, "GaussianBlur", recording_blur)
  rng = np.random.default_rng(0)
  for size, cell, out in (((2048, 1536), 8, (32, 24)), ((1024, 256), 32, (16, 16)),
                          ((2048, 512), 6, (64, 64)), ((1536, 1200), 3, (224, 100)),
                          ((1000, 700), 2, (137, 91))):
    img = _texture(rng, size, cell)
    ref = np.asarray(Image.fromarray(img).resize(out, Image.BILINEAR))
    ours = transforms.resize(img, *out)
    assert ours.shape == ref.shape
    assert _psnr(ours, ref) > 38.0, (size, cell, out, _psnr(ours, ref))
  assert sigmas and max(sigmas) < 2.5, max(sigmas)
  small = _texture(rng, (300, 240), 2)                     # < 6x: no box reduction
  assert transforms._area_reduce(small, 51, 41) is small
  # PNGs (decoded whole; large boxes resized by PIL's reducing path), opaque and
  # transparent, against the reference crop: PIL's full decode, compositing and bilinear.
  rgba = np.dstack([_texture(rng, (1200, 900), 4), rng.integers(0, 256, (900, 1200),
                                                                 dtype=np.uint8)])
  for pixels in (rgba[..., :3], rgba):
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "PNG", compress_level=1)
    for seed in range(2):
      fast = transforms.decode_random_crop(buf.getvalue(), 32, np.random.default_rng(seed))
      ref = transforms.reference_random_crop(buf.getvalue(), 32, np.random.default_rng(seed))
      assert _psnr(fast, ref) > 38.0, (pixels.shape, seed, _psnr(fast, ref))


def _transparent_png(mode: str = "RGBA") -> tuple[bytes, np.ndarray]:
  """A 96 x 64 PNG: transparent (stored colour black, as most editors write it) with an
  opaque red square and a half-transparent blue band. Returns (bytes, RGBA pixels)."""
  rgba = np.zeros((64, 96, 4), np.uint8)
  rgba[16:48, 24:56] = (220, 30, 30, 255)
  rgba[:, 70:80] = (0, 0, 255, 128)
  img = Image.fromarray(rgba, "RGBA")
  if mode == "P":                              # palette PNG, transparency by index
    img = img.quantize(colors=8, method=Image.Quantize.FASTOCTREE)
  buf = io.BytesIO()
  img.save(buf, "PNG")
  return buf.getvalue(), np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGBA"))


def _over(rgba: np.ndarray, background) -> np.ndarray:
  """PIL's own compositing of RGBA pixels over a solid background: the reference."""
  bg = Image.new("RGBA", (rgba.shape[1], rgba.shape[0]), tuple(background) + (255,))
  return np.asarray(Image.alpha_composite(bg, Image.fromarray(rgba, "RGBA")).convert("RGB"))


def test_transparency_is_composited_on_the_background():
  """Transparent PNGs (alpha channel or palette transparency) and RGBA / grey+alpha arrays
  come out over the background colour (white by default), as PIL composites them, in the
  training crop, the eval crop and the notebook decode; never black."""
  for mode in ("RGBA", "P"):
    data, rgba = _transparent_png(mode)
    for background in (transforms.WHITE, (0, 128, 0)):
      want = _over(rgba, background)
      # Whole-image crops at the stored size: no resampling, so compositing alone shows.
      rng = np.random.default_rng(0)
      crop = transforms.decode_random_crop(data, 64, rng, (1.0, 1.0), (1.0, 1.0),
                                           background=background)
      assert np.abs(crop.astype(int) - want[:, 16:80]).max() <= 1, (mode, background)
      center = transforms.decode_center_crop(data, 64, background)
      assert np.abs(center.astype(int) - want[:, 16:80]).max() <= 1
      assert np.abs(np.asarray(transforms.decode(data, background=background), int)
                    - want).max() <= 1
      arr = transforms.random_resized_crop(rgba, 64, np.random.default_rng(0), (1.0, 1.0),
                                           (1.0, 1.0), background=background)
      assert np.abs(arr.astype(int) - want[:, 16:80]).max() <= 1
    assert (crop[0, 0] == (0, 128, 0)).all()               # transparent -> the background
  default = transforms.decode_random_crop(data, 32, np.random.default_rng(0))
  assert default[0, 0].min() >= 250                         # white, not black
  grey = np.stack([np.full((8, 8), 40, np.uint8), np.full((8, 8), 0, np.uint8)], -1)
  assert (transforms.as_rgb(grey) == 255).all()             # grey + alpha, transparent
  half = np.array([[[0, 0, 0, 128]]], np.uint8)
  assert transforms.composite(half).tolist() == [[[127, 127, 127]]]   # 255 * 127 / 255


def test_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch):
  """Over max_pixels: ImageTooLarge naming the size, raised before any pixel is decoded
  (the decoders are replaced by ones that fail); at or under the limit, decoded."""
  png = io.BytesIO()
  Image.new("RGB", (3000, 2000), (10, 20, 30)).save(png, "PNG")
  jpeg = _photo((3000, 2000))
  for data in (png.getvalue(), jpeg):
    with monkeypatch.context() as m:
      def fail(*args, **kwargs):
        raise AssertionError("decoded an image over the limit")
      m.setattr(transforms, "_decode_box", fail)
      m.setattr(Image.Image, "load", fail)
      for fn in (lambda: transforms.decode_random_crop(data, 32, np.random.default_rng(0),
                                                       max_pixels=5_999_999),
                 lambda: transforms.decode_center_crop(data, 32, max_pixels=5_999_999),
                 lambda: transforms.decode(data, 32, max_pixels=5_999_999)):
        with pytest.raises(transforms.ImageTooLarge, match=r"3000 x 2000 = 6.0M pixels"):
          fn()
    assert transforms.decode_random_crop(data, 32, np.random.default_rng(0),
                                         max_pixels=6_000_000).shape == (32, 32, 3)
